"""The ingest job on Beam's local runner, on real images: every input embedded or rejected."""
from __future__ import annotations

import io

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import storage
from pipelines.data.fashion_mnist import CLASSES
from pipelines.decode import decode_image
from pipelines.ingest import IngestConfig, default_batch_name, main, run_ingest
from pipelines.manifest import (BatchManifest, embeddings_dir, list_batches, read_embeddings,
                                read_rejected)
from pipelines.records import item_id
from pipelines.schema import embeddings_matrix
from pipelines.sources import make_source
from tests.conftest import encode, photo


def ingest(inputs, memory, batch, **options):
    return run_ingest(IngestConfig(inputs=[inputs] if isinstance(inputs, str) else inputs,
                                   memory=str(memory), batch=batch, device="cpu", **options))


@pytest.fixture(scope="module")
def fmnist_memory(fmnist_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    result = ingest(str(fmnist_shards / "fashion-mnist-train-{000000..000002}.tar"), root, "train")
    return root, result


def test_every_image_embedded_with_its_label(fmnist_memory):
    root, result = fmnist_memory
    table = read_embeddings(str(root), "train")
    assert result.manifest.counts == {**result.manifest.counts, "read": 100, "embedded": 100,
                                      "rejected": 0, "decoded": 100}
    assert table.num_rows == 100
    assert sorted(set(table.column("label").to_pylist())) == sorted(CLASSES)
    assert table.column("encoder").unique().to_pylist() == ["efficientnet-lite0"]
    ids = table.column("id").to_pylist()
    assert len(set(ids)) == 100
    shards = [source.split("#", 1)[0] for source in table.column("source").to_pylist()]
    assert ids == [item_id("train", shard, key)
                   for shard, key in zip(shards, table.column("key").to_pylist())]
    vectors = embeddings_matrix(table)
    assert vectors.shape == (100, 1280)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert "images/s" in result.summary() and "read=100 embedded=100 rejected=0" in result.summary()


def test_embeddings_match_a_direct_encoder_call(fmnist_memory, fmnist_shards, offline_encoder):
    root, _ = fmnist_memory
    table = read_embeddings(str(root), "train").sort_by("key").slice(0, 12)
    source = make_source("webdataset")
    raw = {r.key: r.data for t in source.plan(str(fmnist_shards / "fashion-mnist-train-*.tar"))
           for r in source.read(t)}
    keys = table.column("key").to_pylist()
    expected = offline_encoder.embed_images([decode_image(raw[k]) for k in keys])
    # Batch composition differs (Beam batches vs one call): float tolerance only.
    np.testing.assert_allclose(embeddings_matrix(table), expected, atol=2e-5)


def test_rerun_is_idempotent_and_replaces_files(fmnist_memory, fmnist_shards):
    root, first = fmnist_memory
    before = read_embeddings(str(root), "train").sort_by("id")
    second = ingest(str(fmnist_shards / "fashion-mnist-train-{000000..000002}.tar"), root, "train")
    after = read_embeddings(str(root), "train").sort_by("id")
    assert second.manifest.run_id != first.manifest.run_id
    assert after.column("id").equals(before.column("id"))  # same rows, no duplicates
    np.testing.assert_allclose(embeddings_matrix(after), embeddings_matrix(before), atol=2e-5)
    files = storage.list_names(embeddings_dir(str(root), "train"))
    assert all(second.manifest.run_id in f for f in files if f.startswith("part-"))
    assert not [f for f in files if f.startswith(".") or "beam-temp" in f]
    assert list_batches(str(root)) == ["train"]


def test_corrupt_inputs_are_rejected_with_reasons_and_good_ones_kept(tmp_path, offline_encoder):
    tree = tmp_path / "tree"
    good = {"cat/chelsea.png": encode(photo("chelsea.png"), "PNG"),
            "cup/coffee.jpg": encode(photo("coffee.png"), "JPEG", quality=92),
            "cup/coffee-cmyk.jpg": encode(photo("coffee.png").convert("CMYK"), "JPEG"),
            "person/astronaut.webp": encode(photo("astronaut.png"), "WEBP")}
    truncated = encode(photo("coffee.png"), "JPEG")
    bad = {"cup/empty.jpg": (b"", "empty"),
           "cup/half.jpg": (truncated[: len(truncated) // 3], "truncated"),
           "cat/notes.png": (b"hello, not an image" * 10, "not an image"),
           "cat/huge.png": (encode(Image.new("L", (3000, 3000)), "PNG"), "exceeds the limit"),
           "cat/pixmap.bmp": (encode(photo("coffee.png").resize((8, 8)), "PPM"), "allowed format")}
    for name, data in {**good, **{k: v[0] for k, v in bad.items()}}.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)

    result = ingest(str(tree), tmp_path / "memory", "mixed", max_pixels=5_000_000,
                    max_reject_ratio=1.0)
    counts = result.manifest.counts
    assert (counts["read"], counts["embedded"], counts["rejected"]) == (9, 4, 5)
    rejected = {row["key"]: row for row in read_rejected(str(tmp_path / "memory"), "mixed").to_pylist()}
    assert set(rejected) == set(bad)
    for key, (_, reason) in bad.items():
        assert rejected[key]["stage"] == "decode" and reason in rejected[key]["message"], rejected[key]
    table = read_embeddings(str(tmp_path / "memory"), "mixed").sort_by("key")
    assert table.column("key").to_pylist() == sorted(good)
    assert table.column("label").to_pylist() == ["cat", "cup", "cup", "person"]
    expected = offline_encoder.embed_images([decode_image(good[k]) for k in sorted(good)])
    np.testing.assert_allclose(embeddings_matrix(table), expected, atol=2e-5)


def test_parquet_on_memory_url_with_duplicate_keys():
    """A key repeated within one file is one item (DuplicateKey); the same key in two files is
    two items (ids hash batch + file + key), their equal content listed as a duplicate."""
    images = [encode(photo(name).resize((48, 48)), "PNG") for name in ("coffee.png", "chelsea.png")]
    for part, keys in [("a", ["k1", "k2"]), ("b", ["k2", "k2"])]:
        buffer = io.BytesIO()
        pq.write_table(pa.table({"image": images, "label": ["cup", "cat"], "key": keys}), buffer)
        with fsspec.open(f"memory://pq-in/{part}.parquet", "wb") as handle:
            handle.write(buffer.getvalue())
    result = ingest("memory://pq-in/*.parquet", "memory://pq-memory", "dupes")
    assert (result.manifest.counts["embedded"], result.manifest.counts["rejected"]) == (3, 1)
    (dupe,) = read_rejected("memory://pq-memory", "dupes").to_pylist()
    assert (dupe["key"], dupe["stage"], dupe["error_type"]) == ("k2", "dedupe", "DuplicateKey")
    assert dupe["source"] == "memory://pq-in/b.parquet#row=1"
    table = read_embeddings("memory://pq-memory", "dupes").sort_by([("key", "ascending"),
                                                                   ("source", "ascending")])
    assert table.column("key").to_pylist() == ["k1", "k2", "k2"]
    assert table.column("source").to_pylist()[1:] == ["memory://pq-in/a.parquet#row=1",
                                                      "memory://pq-in/b.parquet#row=0"]
    assert result.manifest.counts["duplicate_content"] == 1  # b's k2 is a's k1 (coffee)


def test_a_failed_run_leaves_the_previous_batch_intact(fmnist_memory, fmnist_shards, tmp_path):
    root, _ = fmnist_memory
    committed = BatchManifest.read(str(root), "train")
    with pytest.raises(Exception, match="weights file not found"):
        ingest(str(fmnist_shards / "fashion-mnist-train-000000.tar"), root, "train",
               weights=str(tmp_path / "missing.pth"))
    assert BatchManifest.read(str(root), "train") == committed
    assert read_embeddings(str(root), "train").num_rows == 100


def test_command_line_prints_summary(fmnist_shards, tmp_path, capsys):
    assert main(["--input", str(fmnist_shards / "fashion-mnist-test-000000.tar"),
                 "--memory", str(tmp_path / "m"), "--device", "cpu", "--log-level", "WARNING"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    batch = default_batch_name([str(fmnist_shards / "fashion-mnist-test-000000.tar")])
    assert "-fashion-mnist-test-000000-tar-" in batch
    assert line.startswith(f"ingest batch={batch} read=40 embedded=40 rejected=0")


def test_another_encoder_is_refused_before_anything_is_read(fmnist_shards, tmp_path, capsys):
    """A batch embedded by another encoder than the memory's other batches would be committed,
    then refused by every `vmem index build` / `add` ("batches were embedded by different
    encoders"): `vmem ingest` refuses it first, as `vmem import` and `vmem update` do, naming
    the memory's encoder and the option; nothing is written."""
    memory = tmp_path / "memory"
    BatchManifest(batch="shapes", run_id="r1", created="2026-12-02T00:00:00+00:00",
                  encoder="efficientnet-lite0", dim=1280).write(str(memory))
    shard = str(fmnist_shards / "fashion-mnist-test-000000.tar")
    assert main(["--input", shard, "--memory", str(memory), "--batch", "day1", "--device", "cpu",
                 "--encoder", "efficientnet-lite1", "--log-level", "WARNING"]) == 2
    assert ("vmem ingest: error: --encoder 'efficientnet-lite1' but memory "
            f"{memory} was embedded by 'efficientnet-lite0'") in capsys.readouterr().err
    assert list_batches(str(memory)) == ["shapes"]
    assert sorted(p.name for p in memory.iterdir()) == ["embeddings"]
    assert sorted(p.name for p in (memory / "embeddings").iterdir()) == ["shapes"]
    from pipelines.rules import IncompatibleEncoder

    with pytest.raises(IncompatibleEncoder, match="holds dim 1280"):  # another length too
        ingest(shard, memory, "day1", encoder="timm:vit_small_patch14_dinov2.lvd142m")
    BatchManifest(batch="b", run_id="r2", created="2026-12-02T00:00:00+00:00",
                  encoder="efficientnet-lite1", dim=1280).write(str(memory))
    with pytest.raises(IncompatibleEncoder, match="already mixes encoders"):
        ingest(shard, memory, "day1")


def test_default_batch_names_differ_for_different_inputs():
    """Two ingests into one memory without --batch never replace each other's batch (a
    pattern's last part alone, '*.tar', named both 'tar'); the same inputs name the same one."""
    queries, added = default_batch_name(["run/queries/*.tar"]), default_batch_name(["run/new-class/*.tar"])
    assert queries.startswith("queries-tar-") and added.startswith("new-class-tar-")
    assert default_batch_name(["a/queries/*.tar"]) != queries != default_batch_name(["run/queries/*.tar", "x.tar"])
    assert default_batch_name(["run/queries/*.tar"]) == queries
    assert default_batch_name(["gs://b/shards/{00..09}.tar"]).startswith("shards-00-09-tar-")
    # one batch however the same inputs are written; never an online add's batch name (gc)
    assert default_batch_name(["laion/"]) == default_batch_name(["./laion"]) == default_batch_name(
        ["data/../laion"]) == default_batch_name(["laion"])
    assert default_batch_name(["a.tar", "b.tar"]) == default_batch_name(["b.tar", "a.tar"])
    assert default_batch_name(["uploads/online/*.tar"]).startswith("ingest-online-tar-")
