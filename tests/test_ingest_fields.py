"""Issue 12 kinds 2-4 through the Beam job: the picked field and real member name are stored,
unlabelled items are kept with a null label (counted) or rejected, path-only structs are read."""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.data.shard_writer import shard_bytes
from pipelines.ingest import IngestConfig, build_parser, main, run_ingest
from pipelines.manifest import BatchManifest, read_embeddings, read_rejected
from pipelines.records import content_hash


def png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, "PNG")
    return buffer.getvalue()


def test_webdataset_fields_labels_and_unlabelled_through_the_job(tmp_path):
    photo, mask = png((0, 200, 0)), png((0, 0, 0))
    shard = tmp_path / "in.tar"
    shard.write_bytes(shard_bytes([
        ("cam0001", {"PNG": png((250, 0, 0)), "cls": b"7\n"}),
        ("img2d", {"png": png((5, 5, 200)), "txt": b"a caption", "json": b'{"label": 3.0}'}),
        ("nolabel", {"png": png((90, 90, 90)), "txt": b"just a caption"}),
        ("scene01", {"png": photo, "mask.png": mask, "cls": b"3"}),
    ]))
    result = run_ingest(IngestConfig(inputs=[str(shard)], memory=str(tmp_path / "m"), batch="b",
                                     device="cpu"))
    rows = {r["key"]: r for r in read_embeddings(str(tmp_path / "m"), "b").to_pylist()}
    assert {k: r["label"] for k, r in rows.items()} == {"cam0001": "7", "img2d": "3",
                                                        "nolabel": None, "scene01": "3"}
    assert rows["scene01"]["source"] == f"{shard}#scene01.png"
    assert rows["scene01"]["content_hash"] == content_hash(photo)
    assert rows["cam0001"]["source"] == f"{shard}#cam0001.PNG"
    counts = BatchManifest.read(str(tmp_path / "m"), "b").counts
    assert (counts["read"], counts["embedded"], counts["rejected"], counts["unlabelled"]) == (4, 4, 0, 1)
    assert result.manifest.counts["unlabelled"] == 1

    # the same shard from the command line: captions as labels on request, unlabelled rejected
    assert main(["--input", str(shard), "--memory", str(tmp_path / "m2"), "--batch", "b",
                 "--device", "cpu", "--log-level", "WARNING", "--label-from", "cls",
                 "--unlabelled", "reject", "--image-field", "mask.png;png"]) == 0
    rows = {r["key"]: r for r in read_embeddings(str(tmp_path / "m2"), "b").to_pylist()}
    assert {k: r["label"] for k, r in rows.items()} == {"cam0001": "7", "scene01": "3"}
    assert rows["scene01"]["content_hash"] == content_hash(mask)
    rejected = {r["key"]: r for r in read_rejected(str(tmp_path / "m2"), "b").to_pylist()}
    assert {k: (r["stage"], r["error_type"]) for k, r in rejected.items()} == {
        "img2d": ("read", "Unlabelled"), "nolabel": ("read", "Unlabelled")}


def test_parquet_path_only_struct_through_the_job(tmp_path):
    (tmp_path / "local_blue.png").write_bytes(png((0, 0, 255)))
    images = pa.array([{"bytes": png((255, 0, 0)), "path": "red.png"},
                       {"bytes": None, "path": str(tmp_path / "local_blue.png")},
                       {"bytes": None, "path": "local_blue.png"}],
                      type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": images, "label": pa.array([1.0, None, 3.0]),
                             "key": ["hf-0", "hf-1", "hf-2"]}), tmp_path / "hf.parquet")
    run_ingest(IngestConfig(inputs=[str(tmp_path / "hf.parquet")], memory=str(tmp_path / "m"),
                            batch="b", device="cpu"))
    rows = {r["key"]: (r["label"], r["source"])
            for r in read_embeddings(str(tmp_path / "m"), "b").to_pylist()}
    blue = str(tmp_path / "local_blue.png")
    assert rows == {"hf-0": ("1", f"{tmp_path}/hf.parquet#row=0"), "hf-1": (None, blue),
                    "hf-2": ("3", blue)}


def test_help_explains_the_options():
    text = build_parser().format_help()
    for option in ("--image-field", "--label-from", "--unlabelled", "--path-root"):
        assert option in text
    assert "never a" in text and "json:<key>" in text
