"""Issue 12 kinds 5-10: odd paths, pathological shapes, inputs that never end, reject ratio,
every file accounted for, leftovers. Every input is written by the test."""
from __future__ import annotations

import pytest

from pipelines.ingest import build_parser
from pipelines.sources import expand_urls, make_source
from tests.conftest import encode, photo


def _folder(root, names):
    png = encode(photo("coffee.png").resize((32, 32)), "PNG")
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(png)
    return root


# Kind 5: literal paths with glob characters.
def test_existing_path_with_brackets_is_literal(tmp_path):
    tree = _folder(tmp_path / "photos [2024]", ["cat/a.png", "dog/b.png"])
    assert [u.rsplit("/", 2)[-2:] for u in expand_urls(str(tree))] == [["cat", "a.png"],
                                                                       ["dog", "b.png"]]
    # a pattern below a literal bracketed folder: the existing file is taken literally
    assert len(expand_urls(str(tree / "cat" / "a.png"))) == 1
    source = make_source("folder")
    items = [item for task in source.plan(str(tree)) for item in source.read(task)]
    assert sorted((i.key, i.label) for i in items) == [("cat/a.png", "cat"), ("dog/b.png", "dog")]


def test_glob_below_a_bracketed_folder_and_globbed_folders(tmp_path):
    tree = _folder(tmp_path / "photos [2024]", ["cat/a.png", "dog/b.png"])
    assert len(expand_urls(str(tree / "*" / "*.png"))) == 2
    assert len(expand_urls(str(tree / "*"))) == 2  # a matched folder stands for its files
    source = make_source("folder")
    items = [item for task in source.plan(str(tree / "*" / "*.png")) for item in source.read(task)]
    assert sorted((i.key, i.label) for i in items) == [("cat/a.png", "cat"), ("dog/b.png", "dog")]


def test_patterns_expand_only_when_no_such_path_exists(tmp_path):
    _folder(tmp_path, ["s1.png", "s2.png", "x.png"])
    assert len(expand_urls(str(tmp_path / "s[12].png"))) == 2
    _folder(tmp_path, ["s[12].png"])  # now a file of that exact name exists: literal wins
    assert expand_urls(str(tmp_path / "s[12].png")) == [str(tmp_path / "s[12].png")]
    assert len(expand_urls(str(tmp_path / "s{1,2}.png"))) == 2


def test_no_glob_forces_literal(tmp_path):
    _folder(tmp_path, ["s1.png", "s2.png"])
    with pytest.raises(FileNotFoundError, match="taken literally"):
        expand_urls(str(tmp_path / "s*.png"), glob=False)
    assert len(expand_urls(str(tmp_path / "s1.png"), glob=False)) == 1
    args = build_parser().parse_args(["--input", "x", "--memory", "m", "--no-glob"])
    assert args.no_glob
    assert "--no-glob" in build_parser().format_help()


# Kind 6: decode and preprocess cost bounded whatever the shape.
def test_extreme_aspect_ratio_is_rejected_before_decoding():
    from PIL import Image

    from pipelines.decode import ImageRejected, decode_image

    strip = encode(Image.new("RGB", (16000, 1), (90, 120, 200)), "PNG")
    assert len(strip) < 300
    with pytest.raises(ImageRejected, match="aspect ratio of 16000:1"):
        decode_image(strip)


def test_tiny_file_with_many_pixels_is_rejected_by_compression_ratio():
    from PIL import Image

    from pipelines.decode import ImageRejected, decode_image

    bomb = encode(Image.new("1", (6316, 6316), 1), "PNG")
    assert len(bomb) < 20_000  # ~12 KB: 39.9 M pixels, 3300 pixels per byte
    with pytest.raises(ImageRejected, match="compression-ratio limit"):
        decode_image(bomb)
    # the same check in the serving path: serving/encoder.py uses decode_image + preprocessing
    with pytest.raises(ImageRejected, match="compression-ratio"):
        decode_image(bomb, __import__("pipelines.decode").decode.DecodePolicy(max_pixels=40_000_000))


def test_preprocessing_output_bounded_for_wide_images():
    import tracemalloc

    import numpy as np
    from PIL import Image

    from pipelines.decode import DecodePolicy, decode_image
    from pipelines.encoders.base import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

    prep = Preprocessing(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    # past the decode policy (aspect limit off): preprocessing alone still bounds the resize
    strip = decode_image(encode(Image.new("RGB", (16000, 1), (90, 120, 200)), "PNG"),
                         DecodePolicy(max_aspect_ratio=0))
    tracemalloc.start()
    out = prep(strip)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert out.shape == (3, 224, 224)
    assert peak < 50 * 1024 * 1024, peak  # was ~3.3 GB (256 x 4,096,000 before the crop)
    # ordinary shapes are untouched by the bound: same result as without it
    photo_ = photo("coffee.png")
    unbounded = Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD, max_aspect_ratio=1e9)
    np.testing.assert_array_equal(prep(photo_), unbounded(photo_))


# Kind 7: inputs that never end.
def test_fifo_is_rejected_unopened_and_a_stalled_read_times_out(tmp_path):
    import os
    import time

    from pipelines.records import Rejected
    from pipelines.sources.base import ReadTask
    from pipelines.sources.guard import GuardedSource

    tree = _folder(tmp_path / "tree", ["cat/a.png"])
    os.mkfifo(tree / "cat" / "hang.png")
    source = GuardedSource(make_source("folder"), timeout_s=1.0)
    started = time.monotonic()
    items = [item for task in source.plan(str(tree)) for item in source.read(task)]
    assert time.monotonic() - started < 5
    rejected = [i for i in items if isinstance(i, Rejected)]
    assert [(r.key, r.stage, r.error_type) for r in rejected] == [
        ("cat/hang.png", "read", "NotARegularFile")]
    assert "named pipe" in rejected[0].message

    class Stalls:
        name = "stalls"

        def read(self, task):
            yield from ()
            time.sleep(30)

    started = time.monotonic()
    [timed_out] = list(GuardedSource(Stalls(), timeout_s=0.5).read(ReadTask("file:///x.tar")))
    assert time.monotonic() - started < 5
    assert (timed_out.stage, timed_out.error_type) == ("read", "TimeoutError")


def test_ingest_with_a_fifo_finishes_and_rejects_it(tmp_path, offline_encoder):
    import os
    import threading

    from pipelines.ingest import IngestConfig, run_ingest
    from pipelines.manifest import read_rejected

    tree = _folder(tmp_path / "tree", ["cat/a.png", "cat/b.png", "dog/c.png"])
    os.mkfifo(tree / "dog" / "hang.png")
    box = {}
    worker = threading.Thread(target=lambda: box.update(result=run_ingest(IngestConfig(
        inputs=[str(tree)], memory=str(tmp_path / "m"), batch="b", device="cpu",
        item_timeout_s=5))), daemon=True)  # a skipped FIFO is not bad input (reject ratio)
    worker.start()
    worker.join(180)
    assert "result" in box, "ingest hung on a named pipe"
    counts = box["result"].manifest.counts
    assert (counts["read"], counts["embedded"], counts["rejected"]) == (4, 3, 1)
    [row] = read_rejected(str(tmp_path / "m"), "b").to_pylist()
    assert (row["key"], row["stage"], row["error_type"]) == ("dog/hang.png", "read", "NotARegularFile")


def test_decode_timeout_rejects_with_timeout_error():
    import time

    from pipelines.timeouts import call_with_timeout

    with pytest.raises(TimeoutError, match="decoding 'x' did not finish within 0.2 s"):
        call_with_timeout(lambda: time.sleep(5), 0.2, "decoding 'x'")
    assert call_with_timeout(lambda: 7, 1.0) == 7


def test_decode_and_prepare_routes_a_timeout_to_rejected(offline_encoder):
    from apache_beam import pvalue

    from pipelines.decode import DecodePolicy
    from pipelines.records import ImageRecord
    from pipelines.transforms import DecodeAndPrepare

    record = ImageRecord(key="a.png", source="file:///a.png", label="cat",
                         data=encode(photo("coffee.png"), "PNG"))
    [out] = list(DecodeAndPrepare(offline_encoder.preprocessing, DecodePolicy(), 1e-6).process(record))
    assert isinstance(out, pvalue.TaggedOutput)
    assert (out.value.stage, out.value.error_type) == ("decode", "TimeoutError")
    [ok] = list(DecodeAndPrepare(offline_encoder.preprocessing, DecodePolicy(), 30).process(record))
    assert ok.pixels.shape[0] == 3


# Kind 8: a reject-ratio guard.
def test_too_many_bad_inputs_fail_the_job_without_committing(tmp_path, capsys, offline_encoder):
    from pipelines.ingest import main
    from pipelines.manifest import BatchManifest, read_parquet_files

    tree = _folder(tmp_path / "tree", ["cat/a.png", "cat/b.png", "dog/c.png"])
    (tree / "dog" / "broken.png").write_bytes(b"not an image at all")
    memory = tmp_path / "m"
    args = ["--input", str(tree), "--memory", str(memory), "--batch", "b", "--device", "cpu",
            "--log-level", "WARNING"]
    assert main(args) == 3  # 1 of 4 bad > the default 0.1
    err = capsys.readouterr().err
    assert "1 of 4 inputs (25%) were rejected as bad" in err and "not committing" in err
    assert not (memory / "embeddings" / "b" / "_manifest.json").exists()
    written = sorted((memory / "rejected" / "b").glob("part-*.parquet"))
    rows = read_parquet_files([str(p) for p in written]).to_pylist()
    assert [(r["key"], r["stage"]) for r in rows] == [("dog/broken.png", "decode")]
    assert main(args + ["--max-reject-ratio", "0.3"]) == 0
    manifest = BatchManifest.read(str(memory), "b")
    assert (manifest.counts["read"], manifest.counts["rejected"]) == (4, 1)
    assert len(list((memory / "rejected" / "b").glob("part-*.parquet"))) == 1  # old run's removed


# Kind 9: every file accounted for.
def test_files_passed_over_by_extension_are_counted_and_listed(tmp_path, offline_encoder):
    from pipelines.ingest import IngestConfig, run_ingest
    from pipelines.manifest import read_rejected

    tree = _folder(tmp_path / "tree", ["cat/a.png", "cat/b.png", "dog/c.png"])
    (tree / "dog" / "vector.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (tree / "README").write_text("notes")
    result = run_ingest(IngestConfig(inputs=[str(tree)], memory=str(tmp_path / "m"), batch="b",
                                     device="cpu"))  # skipped files never count as bad input
    counts = result.manifest.counts
    assert (counts["read"], counts["embedded"], counts["rejected"]) == (5, 3, 2)
    assert "read=5 embedded=3 rejected=2" in result.summary()
    rows = sorted(read_rejected(str(tmp_path / "m"), "b").to_pylist(), key=lambda r: r["key"])
    assert [(r["key"], r["stage"], r["error_type"]) for r in rows] == [
        ("README", "read", "SkippedByExtension"), ("dog/vector.svg", "read", "SkippedByExtension")]
    assert "not an image file name" in rows[1]["message"]
    with pytest.raises(FileNotFoundError, match="no image files"):
        make_source("folder").plan(str(tree / "dog" / "vector.svg"))


# Kind 10: leftovers of killed runs.
def _beam_temp(folder, name="beam-temp-part-20260101T000000-dead00-0123abcd"):
    leftover = folder / name
    leftover.mkdir(parents=True)
    (leftover / "5f2e.parquet").write_bytes(b"half-written")
    return leftover


def test_next_run_removes_beam_temp_folders(tmp_path, offline_encoder):
    from pipelines.ingest import IngestConfig, run_ingest

    tree = _folder(tmp_path / "tree", ["cat/a.png"])
    memory = tmp_path / "m"
    left = [_beam_temp(memory / "embeddings" / "b"), _beam_temp(memory / "rejected" / "b")]
    run_ingest(IngestConfig(inputs=[str(tree)], memory=str(memory), batch="b", device="cpu"))
    assert not any(p.exists() for p in left)
    assert (memory / "embeddings" / "b" / "_manifest.json").exists()


def test_gc_removes_stale_beam_temp_folders_only(tmp_path):
    import os
    import time

    from indexer.gc import run_gc

    old = [_beam_temp(tmp_path / "embeddings" / "b"), _beam_temp(tmp_path / "rejected" / "b")]
    fresh = _beam_temp(tmp_path / "embeddings" / "c")
    committed = tmp_path / "embeddings" / "b" / "part-x-00000-of-00001.parquet"
    committed.write_bytes(b"kept")
    hour_ago = time.time() - 7200
    for folder in old:
        for path in [folder, *folder.iterdir()]:
            os.utime(path, (hour_ago, hour_ago))
    dry = run_gc(str(tmp_path), keep=1, dry_run=True)
    assert all(p.exists() for p in old)
    report = run_gc(str(tmp_path), keep=1)
    assert not any(p.exists() for p in old), (dry, report)
    assert fresh.exists() and committed.exists()  # within the grace period / not a leftover


def test_serving_prepare_rejects_the_same_shapes(offline_encoder):
    """The Serve encoder's decode + preprocess (serving/encoder.py) is the same path."""
    from PIL import Image

    from pipelines.decode import DecodePolicy
    from serving.encoder import EncoderDeployment

    cls = EncoderDeployment.func_or_class
    deployment = cls.__new__(cls)  # no Ray: the per-image path only
    deployment.encoder, deployment.policy = offline_encoder, DecodePolicy(max_pixels=40_000_000)
    assert "aspect ratio" in deployment._prepare(encode(Image.new("RGB", (60000, 1)), "PNG"))
    assert "compression-ratio" in deployment._prepare(encode(Image.new("1", (6316, 6316), 1), "PNG"))
    assert deployment._prepare(encode(photo("coffee.png"), "PNG")).shape == (3, 224, 224)


def test_ingest_options_are_explained():
    help_text = " ".join(build_parser().format_help().split())
    for option in ("--no-glob", "--max-aspect-ratio", "--item-timeout", "--max-reject-ratio"):
        assert option in help_text
    args = build_parser().parse_args(["-i", "x", "-m", "m", "--max-aspect-ratio", "20",
                                      "--item-timeout", "5", "--max-reject-ratio", "0.5"])
    assert (args.max_aspect_ratio, args.item_timeout, args.max_reject_ratio) == (20, 5, 0.5)


@pytest.mark.parametrize("pattern", ["shards/{000..001}.tar", "photos/"])
def test_an_http_server_that_never_answers_fails_the_listing_in_one_line(pattern, tmp_path, capsys, monkeypatch):
    """A server that accepts connections and never answers: listing the inputs (a WebDataset
    pattern, a folder) gives up after the bounded socket read (pipelines.storage
    ``bound_http_reads``, shortened here) with one line naming the input; nothing is written."""
    import socket
    import time

    import aiohttp
    import fsspec

    from vmem.cli import main

    client = fsspec.config.conf["http"]["client_kwargs"]
    monkeypatch.setitem(client, "timeout", aiohttp.ClientTimeout(total=None, sock_connect=1, sock_read=1))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel accepts; nobody ever reads or answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/{pattern}"
        started = time.monotonic()
        status = main(["ingest", "--input", url, "--memory", str(tmp_path / "memory")])
        took = time.monotonic() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and took < 60, (status, took)
    assert err[-1].startswith("vmem ingest: error: ") and "did not answer in time" in err[-1], err
    assert f"127.0.0.1:{url.split(':')[2].split('/')[0]}" in err[-1]
    assert not (tmp_path / "memory" / "embeddings").exists()
