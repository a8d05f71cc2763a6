"""Issue 12 kinds 2-4 on inputs the tests write: WebDataset fields (multi-dot fields, member-name
case), labels (--label-from, integral floats, unlabelled), Hugging Face path-only image structs."""
from __future__ import annotations

import io
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.data.shard_writer import shard_bytes
from pipelines.records import ImageRecord, Rejected
from pipelines.sources import make_source
from pipelines.sources.base import normalize_label, parse_label_from
from pipelines.sources.fetch import read_sources


def png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), color).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), color).save(buffer, "JPEG")
    return buffer.getvalue()


def read_all(source, pattern):
    return [item for task in source.plan(pattern) for item in source.read(task)]


# --- kind 2: WebDataset fields -----------------------------------------------------------------

def test_mask_field_is_never_the_image_and_field_preference_is_explicit(tmp_path):
    photo, mask = png((0, 200, 0)), png((0, 0, 0))
    (tmp_path / "mask.tar").write_bytes(shard_bytes([
        ("scene01", {"png": photo, "mask.png": mask, "cls": b"3"}),
        ("scene02", {"mask.png": mask, "depth.jpg": jpeg((9, 9, 9))}),  # no plain image field
        ("scene03", {"jpg": jpeg((1, 2, 3)), "png": photo}),  # first in the preference wins
    ]))
    out = read_all(make_source("webdataset"), str(tmp_path / "mask.tar"))
    images = {r.key: r for r in out if isinstance(r, ImageRecord)}
    assert images["scene01"].data == photo
    assert images["scene01"].source == f"{tmp_path}/mask.tar#scene01.png"
    assert images["scene01"].label == "3"
    assert images["scene03"].source.endswith("#scene03.jpg")
    (missing,) = [r for r in out if isinstance(r, Rejected)]
    assert (missing.key, missing.error_type) == ("scene02", "MissingImage")
    assert "depth.jpg" in missing.message and "mask.png" in missing.message

    masks = read_all(make_source("webdataset", image_field="mask.png"), str(tmp_path / "mask.tar"))
    chosen = {r.key: r for r in masks if isinstance(r, ImageRecord)}
    assert chosen["scene01"].data == mask and chosen["scene01"].source.endswith("#scene01.mask.png")
    ordered = read_all(make_source("webdataset", image_field="PNG;jpg"), str(tmp_path / "mask.tar"))
    assert {r.key: r.source.rsplit("#", 1)[1] for r in ordered if isinstance(r, ImageRecord)} == {
        "scene01": "scene01.png", "scene03": "scene03.png"}


def test_upper_case_member_is_recorded_as_is_and_reads_back(tmp_path):
    data = jpeg((250, 0, 0))
    (tmp_path / "upper.tar").write_bytes(shard_bytes([("cam0001", {"JPG": data, "cls": b"7\n"}),
                                                      ("cam0002", {"Jpeg": data})]))
    out = read_all(make_source("webdataset"), str(tmp_path / "upper.tar"))
    sources = {r.key: r.source for r in out}
    assert sources == {"cam0001": f"{tmp_path}/upper.tar#cam0001.JPG",
                       "cam0002": f"{tmp_path}/upper.tar#cam0002.Jpeg"}
    assert [r.label for r in out] == ["7", None]
    back = read_sources(list(sources.values()), [str(tmp_path)])
    assert back == {source: data for source in sources.values()}


# --- kind 3: labels ------------------------------------------------------------------------------

def test_img2dataset_caption_is_not_a_label_unless_asked(tmp_path):
    meta = {"label": "zoom-out", "caption": "zoom out (breeze)", "status": "success", "n": 3.0}
    (tmp_path / "00000.tar").write_bytes(shard_bytes([(
        "0000001", {"jpg": jpeg((200, 30, 30)), "txt": b"zoom out (breeze)",
                    "json": json.dumps(meta).encode()})]))
    shard = str(tmp_path / "00000.tar")

    def label(**options):
        (record,) = read_all(make_source("webdataset", **options), shard)
        return record.label

    assert label() == "zoom-out"  # default cls;json:label
    assert label(label_from="txt") == "zoom out (breeze)"
    assert label(label_from="json:status") == "success"
    assert label(label_from="json:n") == "3"
    assert label(label_from="cls") is None  # no .cls: unlabelled, never ''
    with pytest.raises(ValueError, match="do not apply"):
        make_source("webdataset", label_from="column:label")
    with pytest.raises(ValueError, match="unknown kind"):
        parse_label_from("caption")
    with pytest.raises(ValueError, match="needs a name"):
        parse_label_from("json")


def test_label_normalisation():
    assert [normalize_label(v) for v in (3, 3.0, b"3\n", " 3 ", "3", float("nan"), None, "", "  ",
                                         2.5, True)] == \
        ["3", "3", "3", "3", "3", None, None, None, None, "2.5", "true"]


def test_pandas_float_labels_stay_integers_and_missing_is_unlabelled(tmp_path):
    frame = pd.DataFrame({"image": [png((10 * i, 100, 100)) for i in range(4)],
                          "label": [3, 5, None, 3], "key": [f"pd-{i}" for i in range(4)]})
    assert str(frame["label"].dtype) == "float64"  # what pandas writes
    frame.to_parquet(tmp_path / "pd.parquet")
    out = read_all(make_source("parquet"), str(tmp_path / "pd.parquet"))
    assert [(r.key, r.label) for r in out] == [("pd-0", "3"), ("pd-1", "5"), ("pd-2", None),
                                               ("pd-3", "3")]
    (tmp_path / "w.tar").write_bytes(shard_bytes([("w", {"png": png((1, 1, 1)), "cls": b"3"})]))
    (wds,) = read_all(make_source("webdataset"), str(tmp_path / "w.tar"))
    assert wds.label == out[0].label  # one class across sources

    frame.assign(fine=["a", None, "c", None]).to_parquet(tmp_path / "two.parquet")
    both = read_all(make_source("parquet", label_from="column:fine;column:label"),
                    str(tmp_path / "two.parquet"))
    assert [r.label for r in both] == ["a", "5", "c", "3"]
    with pytest.raises(ValueError, match="do not apply"):
        make_source("parquet", label_from="cls")


# --- kind 4: Hugging Face {bytes, path} with only a path ------------------------------------------

def test_hf_image_struct_with_only_a_path_is_read_from_the_path(tmp_path):
    folder, outside = tmp_path / "data", tmp_path / "elsewhere"
    (folder / "imgs").mkdir(parents=True)
    outside.mkdir()
    red, blue, grey = png((255, 0, 0)), png((0, 0, 255)), png((9, 9, 9))
    (folder / "imgs" / "blue.png").write_bytes(blue)
    (folder / "local.png").write_bytes(blue)
    (outside / "grey.png").write_bytes(grey)
    images = pa.array([
        {"bytes": red, "path": "red.png"},  # bytes win
        {"bytes": None, "path": "imgs/blue.png"},  # relative to the Parquet file's folder
        {"bytes": None, "path": str(folder / "local.png")},  # absolute, under that folder
        {"bytes": None, "path": "../elsewhere/grey.png"},  # escapes: refused
        {"bytes": None, "path": str(outside / "grey.png")},  # absolute outside: refused
        {"bytes": None, "path": "imgs/missing.png"},  # not there
    ], type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": images, "label": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
                             "key": [f"hf-{i}" for i in range(6)]}), folder / "hf.parquet")

    out = {r.key: r for r in read_all(make_source("parquet"), str(folder / "hf.parquet"))}
    assert out["hf-0"].data == red and out["hf-0"].source == f"{folder}/hf.parquet#row=0"
    assert (out["hf-1"].data, out["hf-1"].source, out["hf-1"].label) == (
        blue, f"{folder}/imgs/blue.png", "2")
    assert out["hf-2"].data == blue and out["hf-2"].source == str(folder / "local.png")
    for key in ("hf-3", "hf-4"):
        assert isinstance(out[key], Rejected) and out[key].error_type == "SourceRefused"
        assert "only path" in out[key].message
    assert isinstance(out["hf-5"], Rejected) and out["hf-5"].error_type == "FileNotFoundError"
    assert read_sources([out["hf-1"].source], [str(folder)]) == {out["hf-1"].source: blue}

    rooted = {r.key: r for r in read_all(make_source("parquet", path_roots=(str(outside),)),
                                         str(folder / "hf.parquet"))}
    assert rooted["hf-4"].data == grey
    assert isinstance(rooted["hf-3"], Rejected)  # '..' is never accepted
