"""Members read past are listed: WebDataset fields not used as image or label (a mask, a
caption), a second member of one field, tar metadata; Parquet columns not used as image, label
or key. Listed in ROOT/rejected/<batch>/skipped-*.parquet and counted as skipped_members,
never as read (read = embedded + rejected still holds)."""
from __future__ import annotations

import io
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.ingest import IngestConfig, run_ingest
from pipelines.manifest import BatchManifest, read_parquet_files
from pipelines.records import ImageRecord, Skipped
from pipelines.sources import make_source


def png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, "PNG")
    return buffer.getvalue()


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def shard(path):
    path.write_bytes(tar_bytes([
        ("__index__.json", b"{}"),
        ("scene01.png", png((0, 200, 0))), ("scene01.mask.png", png((0, 0, 0))),
        ("scene01.cls", b"3"),
        ("img2d.jpg", png((5, 5, 200))), ("img2d.txt", b"a caption"),
        ("img2d.json", b'{"label": "cat"}'),
        ("dup.JPG", png((200, 0, 0))), ("dup.jpg", png((201, 0, 0))), ("dup.cls", b"1"),
        ("README", b"notes"),
    ]))
    return path


def read_all(source, pattern):
    return [item for task in source.plan(pattern) for item in source.read(task)]


def test_webdataset_lists_every_member_it_reads_past(tmp_path):
    url = str(shard(tmp_path / "in.tar"))
    items = read_all(make_source("webdataset", list_skipped=True), url)
    records = {i.key: i for i in items if isinstance(i, ImageRecord)}
    assert set(records) == {"scene01", "img2d", "dup"}
    skipped = {i.source.split("#", 1)[1]: i for i in items if isinstance(i, Skipped)}
    assert set(skipped) == {"__index__.json", "scene01.mask.png", "img2d.txt", "dup.jpg", "README"}
    assert "field 'mask.png' not used: the image is 'png'" in skipped["scene01.mask.png"].reason
    assert "label from 'json'" in skipped["img2d.txt"].reason
    assert "the first, 'dup.JPG', is used" in skipped["dup.jpg"].reason
    assert skipped["dup.jpg"].key == "dup" and "tar metadata" in skipped["README"].reason
    # not asked: the reader yields records and rejections only, as before
    assert not any(isinstance(i, Skipped) for i in read_all(make_source("webdataset"), url))


def test_parquet_lists_columns_it_does_not_use(tmp_path):
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"image": [png((1, 2, 3))] * 2, "label": ["a", "b"],
                             "caption": ["x", "y"], "width": [32, 32]}), path)
    items = read_all(make_source("parquet", list_skipped=True), str(path))
    skipped = sorted((i.key, i.source, i.reason) for i in items if isinstance(i, Skipped))
    assert [(k, s) for k, s, _ in skipped] == [("part", f"{path}#column=caption"),
                                               ("part", f"{path}#column=width")]
    assert "column 'caption' (2 rows) not used" in skipped[0][2]
    assert sum(isinstance(i, ImageRecord) for i in items) == 2


def test_the_job_writes_the_listing_and_counts_it_apart(tmp_path):
    url = str(shard(tmp_path / "in.tar"))
    memory = str(tmp_path / "m")
    result = run_ingest(IngestConfig(inputs=[url], memory=memory, batch="b", device="cpu"))
    counts = result.manifest.counts
    assert (counts["read"], counts["embedded"], counts["rejected"]) == (3, 3, 0)
    assert counts["skipped_members"] == 5 and "skipped_members=5" in result.summary()
    manifest = BatchManifest.read(memory, "b")
    [listing] = manifest.skipped_files
    table = read_parquet_files([f"{memory}/rejected/b/{listing['path']}"])
    assert sorted(s.split("#", 1)[1] for s in table.column("source").to_pylist()) == [
        "README", "__index__.json", "dup.jpg", "img2d.txt", "scene01.mask.png"]
