"""Readers of every source type, on local and memory:// URLs."""
from __future__ import annotations

import io
import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data.shard_writer import shard_bytes
from pipelines.records import ImageRecord, Rejected
from pipelines.sources import detect_format, expand_braces, expand_urls, make_source
from pipelines.sources.webdataset import split_member
from tests.conftest import encode, photo


@pytest.fixture
def memfs():
    fs = fsspec.filesystem("memory")
    fs.rm("/", recursive=True) if fs.exists("/t") else None
    yield fs
    if fs.exists("/t"):
        fs.rm("/t", recursive=True)


def write(url: str, data: bytes) -> None:
    with fsspec.open(url, "wb") as handle:
        handle.write(data)


def records(source, pattern):
    return [item for task in source.plan(pattern) for item in source.read(task)]


def test_brace_expansion_ranges_lists_and_padding():
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}/{1..2}") == ["a/1", "a/2", "b/1", "b/2"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ValueError, match="unbalanced"):
        expand_braces("s-{000..002.tar")


def test_pattern_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no files match"):
        expand_urls(str(tmp_path / "missing-*.tar"))


def test_member_names_split_at_first_dot_of_basename():
    assert split_member("dir.x/000123.seg.png") == ("dir.x/000123", "seg.png")
    assert split_member("abc.JPG") == ("abc", "JPG")  # the real member name is kept


def test_webdataset_labels_from_cls_txt_json(memfs):
    png = encode(photo("coffee.png").resize((32, 32)), "PNG")
    samples = [
        ("a", {"png": png, "cls": b"7\n"}),
        ("b", {"jpg": encode(photo("chelsea.png"), "JPEG"), "txt": b"cat"}),
        ("c", {"webp": encode(photo("coffee.png"), "WEBP"), "json": json.dumps({"label": "cup"}).encode()}),
        ("d", {"png": png}),  # unlabelled
        ("e", {"txt": b"orphan caption"}),  # no image
    ]
    write("memory://t/shard-0.tar", shard_bytes(samples))
    out = records(make_source("webdataset"), "memory://t/shard-{0..0}.tar")
    images = {r.key: r for r in out if isinstance(r, ImageRecord)}
    # default cls;json:label: a .txt (a caption in img2dataset shards) is never a class
    assert {k: r.label for k, r in images.items()} == {"a": "7", "b": None, "c": "cup", "d": None}
    by_txt = {r.key: r.label for r in records(make_source("webdataset", label_from="txt;cls"),
                                             "memory://t/shard-0.tar") if isinstance(r, ImageRecord)}
    assert by_txt == {"a": "7", "b": "cat", "c": None, "d": None}
    assert images["a"].data == png and images["a"].source == "memory://t/shard-0.tar#a.png"
    (missing,) = [r for r in out if isinstance(r, Rejected)]
    assert missing.key == "e" and missing.error_type == "MissingImage"


def test_truncated_tar_keeps_what_was_read_and_rejects_the_rest(tmp_path):
    png = encode(photo("coffee.png"), "PNG")
    data = shard_bytes([(f"k{i}", {"png": png, "cls": b"cup"}) for i in range(4)])
    (tmp_path / "broken.tar").write_bytes(data[: int(len(data) * 0.6)])
    out = records(make_source("webdataset"), str(tmp_path / "broken.tar"))
    good = [r for r in out if isinstance(r, ImageRecord)]
    bad = [r for r in out if isinstance(r, Rejected)]
    assert 1 <= len(good) < 4 and all(r.data == png for r in good)
    assert len(bad) == 1 and bad[0].stage == "read"


def test_folder_labels_are_parent_folders(tmp_path):
    for label, name in [("cat", "chelsea.png"), ("cup", "coffee.png")]:
        (tmp_path / "tree" / label).mkdir(parents=True)
        (tmp_path / "tree" / label / name).write_bytes(encode(photo(name), "PNG"))
    (tmp_path / "tree" / "README.txt").write_text("not an image, skipped by extension")
    out = records(make_source("folder"), str(tmp_path / "tree"))
    images = [r for r in out if isinstance(r, ImageRecord)]
    assert sorted((r.key, r.label) for r in images) == [("cat/chelsea.png", "cat"), ("cup/coffee.png", "cup")]
    # the passed-over file is accounted for (issue 12 kind 9), never opened
    assert [(r.key, r.error_type) for r in out if isinstance(r, Rejected)] == [
        ("README.txt", "SkippedByExtension")]


def test_folder_on_memory_url(memfs):
    write("memory://t/tree/dog/x.png", encode(photo("coffee.png"), "PNG"))
    (record,) = records(make_source("folder"), "memory://t/tree")
    assert (record.key, record.label, record.source) == ("dog/x.png", "dog", "memory://t/tree/dog/x.png")


@pytest.mark.parametrize("struct_column", [False, True])
def test_parquet_binary_and_struct_image_columns(memfs, struct_column):
    images = [encode(photo(n).resize((16, 16)), "PNG") for n in ("coffee.png", "chelsea.png")]
    column = (pa.array([{"bytes": b, "path": None} for b in images]) if struct_column
              else pa.array(images, type=pa.binary()))
    table = pa.table({"image": column, "label": ["cup", None]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write("memory://t/part-0.parquet", buffer.getvalue())
    out = records(make_source("parquet"), "memory://t/*.parquet")
    assert [(r.key, r.label, r.data) for r in out] == [("part-0/0", "cup", images[0]),
                                                       ("part-0/1", None, images[1])]


def test_parquet_without_image_column_is_rejected_not_crashed(memfs):
    buffer = io.BytesIO()
    pq.write_table(pa.table({"pixels": [b"x"]}), buffer)
    write("memory://t/bad.parquet", buffer.getvalue())
    (rejected,) = records(make_source("parquet"), "memory://t/bad.parquet")
    assert isinstance(rejected, Rejected) and "image column" in rejected.message


def test_format_detection():
    assert detect_format("gs://b/{000..009}.tar") == "webdataset"
    assert detect_format("s3://b/x/*.parquet") == "parquet"
    assert detect_format("/data/imagenet/train") == "folder"


def test_sources_read_back_from_every_container_kind(memfs):
    """Evidence images come back from the `source` each reader recorded: a tar member, a
    Parquet row, a plain file; a vanished source is absent, not an error."""
    from pipelines.sources.fetch import read_sources

    images = [encode(photo(n).resize((8, 8)), "PNG") for n in ("coffee.png", "chelsea.png")]
    write("memory://t/s.tar", shard_bytes([("a", {"png": images[0], "cls": b"cup"}),
                                           ("b", {"png": images[1], "cls": b"cat"})]))
    buffer = io.BytesIO()
    pq.write_table(pa.table({"image": pa.array(images, type=pa.binary())}), buffer)
    write("memory://t/p.parquet", buffer.getvalue())
    write("memory://t/tree/cup/x.png", images[0])
    recorded = [r.source for pattern, kind in [("memory://t/s.tar", "webdataset"),
                                               ("memory://t/p.parquet", "parquet"),
                                               ("memory://t/tree", "folder")]
                for r in records(make_source(kind), pattern)]
    found = read_sources(recorded + ["memory://t/gone.tar#z.png", "memory://t/gone.png"], ["memory://t/"])
    assert [found[s] for s in recorded] == [images[0], images[1], images[0], images[1], images[0]]
    assert "memory://t/gone.tar#z.png" not in found and "memory://t/gone.png" not in found
