"""`vmem import`: embeddings users already have (clip-retrieval output, autofaiss .npy folders
and Parquet embedding columns) become an embedding batch that builds and answers queries."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.build import BuildConfig, run_build
from indexer.executor import LocalExecutor
from indexer.search import ShardedIndex
from pipelines.import_embeddings import ImportConfig, build_parser, main, run_import
from pipelines.manifest import BatchManifest, list_batches, read_embeddings, read_rejected
from pipelines.records import item_id
from pipelines.schema import embeddings_matrix
from pipelines.sources.embeddings import EmbeddingPart, plan_parts, read_chunks

LOCAL = LocalExecutor()
DIM = 16


def clip_retrieval_output(folder, rng, rows=(10, 10), dtypes=(np.float16, np.float32)):
    """clip-retrieval's layout: img_emb/img_emb_N.npy + metadata/metadata_N.parquet, row-aligned
    (rows as clip-retrieval writes them: unit-norm float16; part 1 float32 and not normalised).
    Row 2 of part 1 is NaN, row 5 of part 1 all zeros. Returns the float32 vectors per part."""
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    parts = []
    for n, (count, dtype) in enumerate(zip(rows, dtypes)):
        vectors = rng.normal(size=(count, DIM)).astype(np.float32)
        if n == 0:
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        else:
            vectors *= 3.0
            vectors[2, 4] = np.nan
            vectors[5] = 0
        np.save(folder / "img_emb" / f"img_emb_{n}.npy", vectors.astype(dtype))
        labels = pa.array([float(i % 3) if i != 7 else None for i in range(count)], pa.float64())
        pq.write_table(pa.table({
            "image_path": [f"/data/{n}/{i:05d}.jpg" for i in range(count)],
            "url": [f"https://example.invalid/{n}/{i}.jpg" for i in range(count)],
            "caption": [f"a photo number {i}" for i in range(count)],
            "label": labels,
        }), folder / "metadata" / f"metadata_{n}.parquet", row_group_size=4)
        parts.append(vectors.astype(dtype).astype(np.float32))
    return parts


def nearest(root: str, query: np.ndarray) -> int:
    manifest = run_build(BuildConfig(root), LOCAL)
    _, ids = ShardedIndex(root, manifest).search(query[None, :].astype(np.float32), 1)
    return int(ids[0, 0])


def test_clip_retrieval_layout_imports_builds_and_finds_itself(tmp_path, rng):
    vectors = clip_retrieval_output(tmp_path / "laion", rng)
    root = str(tmp_path / "memory")
    result = run_import(ImportConfig(embeddings=str(tmp_path / "laion"), memory=root,
                                     encoder="open_clip:ViT-B-32", batch="laion",
                                     label_from="column:label", chunk_rows=3))
    counts = result.manifest.counts
    assert (counts["read"], counts["embedded"], counts["rejected"]) == (20, 18, 2)
    assert counts["unlabelled"] == 2 and counts["normalised"] == 8  # part 1 was not unit norm
    assert result.manifest.encoder == "open_clip:ViT-B-32" and result.manifest.dim == DIM
    assert "read=20 embedded=18 rejected=2" in result.summary()

    rejected = {r["key"]: r for r in read_rejected(root, "laion").to_pylist()}
    assert {k: (r["stage"], r["error_type"]) for k, r in rejected.items()} == {
        "img_emb_1/2": ("import", "NonFinite"), "img_emb_1/5": ("import", "ZeroVector")}
    assert rejected["img_emb_1/2"]["source"] == "https://example.invalid/1/2.jpg"

    table = read_embeddings(root, "laion")
    rows = {r["key"]: r for r in table.to_pylist()}
    assert rows["img_emb_0/4"]["label"] == "1" and rows["img_emb_1/7"]["label"] is None
    np.testing.assert_allclose(np.linalg.norm(embeddings_matrix(table), axis=1), 1.0, atol=1e-5)
    shard = str(tmp_path / "laion" / "img_emb" / "img_emb_1.npy")
    target = rows["img_emb_1/8"]
    assert target["id"] == item_id("laion", shard, "img_emb_1/8")
    assert target["source"] == "https://example.invalid/1/8.jpg" and target["label"] == "2"

    found = nearest(root, vectors[1][8] / np.linalg.norm(vectors[1][8]))
    assert found == target["id"]

    # re-importing the same input into the same batch: the same ids, the batch replaced
    again = run_import(ImportConfig(embeddings=str(tmp_path / "laion"), memory=root,
                                    encoder="open_clip:ViT-B-32", batch="laion",
                                    label_from="column:label"))
    assert again.manifest.run_id != result.manifest.run_id
    assert sorted(read_embeddings(root, "laion").column("id").to_pylist()) == sorted(
        table.column("id").to_pylist())


def test_autofaiss_npy_folder_without_metadata(tmp_path, rng):
    folder = tmp_path / "embs"
    folder.mkdir()
    vectors = rng.normal(size=(7, DIM)).astype(np.float32)
    np.save(folder / "part-a.npy", vectors[:4])
    np.save(folder / "part-b.npy", vectors[4:])
    root = str(tmp_path / "memory")
    assert main(["--embeddings", str(folder), "--memory", root, "--encoder", "dinov2",
                 "--batch", "faiss", "--log-level", "WARNING"]) == 0
    table = read_embeddings(root, "faiss")
    assert sorted(table.column("key").to_pylist()) == ["part-a/0", "part-a/1", "part-a/2",
                                                       "part-a/3", "part-b/0", "part-b/1",
                                                       "part-b/2"]
    assert table.column("label").null_count == 7
    assert BatchManifest.read(root, "faiss").counts["unlabelled"] == 7
    found = nearest(root, vectors[5] / np.linalg.norm(vectors[5]))
    assert found == item_id("faiss", str(folder / "part-b.npy"), "part-b/1")


def test_parquet_embedding_column_rejects_a_wrong_length_row(tmp_path, rng):
    vectors = rng.normal(size=(5, DIM)).astype(np.float32)
    rows = [list(v) for v in vectors]
    rows[3] = rows[3][:-2]  # wrong dimension
    path = tmp_path / "embs.parquet"
    pq.write_table(pa.table({"embedding": pa.array(rows, pa.list_(pa.float32())),
                             "name": [f"n{i}" for i in range(5)],
                             "cls": ["a", "b", "a", "b", "a"]}), path)
    root = str(tmp_path / "memory")
    result = run_import(ImportConfig(embeddings=str(path), memory=root, encoder="e", batch="pq",
                                     key_column="name", label_from="column:cls",
                                     max_reject_ratio=0.5))
    assert (result.manifest.counts["embedded"], result.manifest.counts["rejected"]) == (4, 1)
    [bad] = read_rejected(root, "pq").to_pylist()
    assert (bad["key"], bad["error_type"]) == ("n3", "WrongDimension")
    assert "length 14, expected 16" in bad["message"]
    assert sorted(read_embeddings(root, "pq").column("key").to_pylist()) == ["n0", "n1", "n2", "n4"]


def test_refuses_another_dimension_or_encoder_and_guards_the_reject_ratio(tmp_path, rng, capsys):
    root = str(tmp_path / "memory")
    folder = tmp_path / "a"
    folder.mkdir()
    np.save(folder / "x.npy", rng.normal(size=(4, DIM)).astype(np.float32))
    run_import(ImportConfig(embeddings=str(folder), memory=root, encoder="e", batch="first"))
    other = tmp_path / "b"
    other.mkdir()
    np.save(other / "x.npy", rng.normal(size=(4, DIM * 2)).astype(np.float32))
    with pytest.raises(ValueError, match="dim 32 but memory .* holds dim 16"):
        run_import(ImportConfig(embeddings=str(other), memory=root, encoder="e", batch="second"))
    with pytest.raises(ValueError, match="--encoder 'f' but memory"):
        run_import(ImportConfig(embeddings=str(folder), memory=root, encoder="f", batch="second"))

    bad = tmp_path / "bad"
    bad.mkdir()
    vectors = rng.normal(size=(4, DIM)).astype(np.float32)
    vectors[:2] = np.inf
    np.save(bad / "x.npy", vectors)
    assert main(["--embeddings", str(bad), "--memory", root, "--encoder", "e", "--batch", "bad",
                 "--log-level", "WARNING"]) == 3
    assert "2 of 4 inputs (50%) were rejected as bad" in capsys.readouterr().err
    assert "bad" not in list_batches(root)  # not committed


def test_metadata_must_be_row_aligned_and_paired(tmp_path, rng):
    clip_retrieval_output(tmp_path / "out", rng, rows=(4, 6))
    pq.write_table(pa.table({"url": ["u"] * 5}), tmp_path / "out" / "metadata" / "metadata_1.parquet")
    with pytest.raises(ValueError, match="not row-aligned"):
        run_import(ImportConfig(embeddings=str(tmp_path / "out"), memory=str(tmp_path / "m"),
                                encoder="e"))
    (tmp_path / "out" / "metadata" / "metadata_1.parquet").unlink()
    with pytest.raises(ValueError, match="needs exactly one metadata file"):
        plan_parts(str(tmp_path / "out"))


def test_reading_streams_in_chunks_aligned_with_metadata(tmp_path, rng):
    vectors = clip_retrieval_output(tmp_path / "out", rng, rows=(10, 6))
    part = plan_parts(str(tmp_path / "out"))[0]
    assert part == EmbeddingPart(str(tmp_path / "out" / "img_emb" / "img_emb_0.npy"),
                                 str(tmp_path / "out" / "metadata" / "metadata_0.parquet"))
    chunks = list(read_chunks(part, DIM, ["url", "label"], chunk_rows=3))
    assert [len(c.vectors) for c in chunks] == [3, 3, 3, 1]
    assert [c.metadata.column("url").to_pylist()[0] for c in chunks] == [
        f"https://example.invalid/0/{i}.jpg" for i in (0, 3, 6, 9)]
    np.testing.assert_array_equal(np.concatenate([c.vectors for c in chunks]), vectors[0])


def test_help_explains_every_option():
    text = build_parser().format_help()
    for option in ("--embeddings", "--metadata", "--encoder", "--label-from", "--unlabelled",
                   "--max-reject-ratio", "--batch", "--key-column", "--embedding-column",
                   "clip-retrieval", "row-aligned", "LAION"):
        assert option in text


def test_remote_npy_is_streamed_after_its_header(rng):
    import io

    import fsspec

    vectors = rng.normal(size=(9, DIM)).astype(np.float16)
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    with fsspec.open("memory://import-in/emb_0.npy", "wb") as handle:
        handle.write(buffer.getvalue())
    part = plan_parts("memory://import-in")[0]
    chunks = list(read_chunks(part, DIM, [], chunk_rows=4))
    assert [len(c.vectors) for c in chunks] == [4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([c.vectors for c in chunks]),
                                  vectors.astype(np.float32))
    result = run_import(ImportConfig(embeddings="memory://import-in", memory="memory://import-m",
                                     encoder="e", batch="b"))
    assert result.manifest.counts["embedded"] == 9


@pytest.mark.slow
def test_the_ray_data_runner_writes_what_the_local_runner_writes(tmp_path, rng, ray_executor):
    """--runner ray converts each input file in a Ray Data task: the same rows, ids, labels and
    rejected rows as the in-process runner, committed once."""
    clip_retrieval_output(tmp_path / "laion", rng, rows=(10, 12, 7), dtypes=(np.float16,) * 3)
    results = {}
    for runner in ("local", "ray"):
        root = str(tmp_path / f"memory-{runner}")
        result = run_import(ImportConfig(embeddings=str(tmp_path / "laion"), memory=root,
                                         encoder="e", batch="laion", label_from="column:label",
                                         chunk_rows=4, runner=runner, max_reject_ratio=1.0))
        table = read_embeddings(root, "laion").sort_by("id")
        results[runner] = (result.manifest.counts, table.select(["id", "key", "label", "source"]),
                           embeddings_matrix(table),
                           sorted(r["key"] for r in read_rejected(root, "laion").to_pylist()))
        assert result.manifest.runner == f"import-{runner}" and len(result.manifest.files) == 3
    local, ray = results["local"], results["ray"]
    assert local[0] == ray[0] and local[0]["read"] == 29
    assert local[1].equals(ray[1]) and np.array_equal(local[2], ray[2]) and local[3] == ray[3]
