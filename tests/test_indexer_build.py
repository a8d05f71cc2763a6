"""Index builds on Ray and in-process, against brute force on real embeddings."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from indexer.build import BuildConfig, run_build
from indexer.executor import LocalExecutor
from indexer.layout import list_versions, read_latest
from indexer.reader import DuplicateIds, IncompatibleBatches
from indexer.search import ShardedIndex, merge_topk
from indexer.store import load_index, resolve_version
from indexer.tuning import recall_at
from tests.indexer_helpers import brute_force, load_embeddings


def queries_of(embedded_memory) -> np.ndarray:
    return load_embeddings(str(embedded_memory / "queries"))[1]


def test_merge_topk_orders_by_score_then_id():
    scores = [np.array([[0.9, 0.5]]), np.array([[0.7, 0.5], ])]
    ids = [np.array([[10, 30]]), np.array([[20, 5]])]
    merged_scores, merged_ids = merge_topk(scores, ids, 3)
    assert merged_ids.tolist() == [[10, 20, 5]] and merged_scores.tolist()[0][:2] == pytest.approx([0.9, 0.7])
    padded = merge_topk([np.array([[0.3, -np.inf]])], [np.array([[4, -1]])], 2)
    assert padded[1].tolist() == [[4, -1]]


def test_exact_ray_build_equals_single_process_and_brute_force(embedded_memory, memory_copy,
                                                               ray_executor, tmp_path):
    import shutil

    single_root = str(tmp_path / "single")
    shutil.copytree(memory_copy, single_root)
    ray_manifest = run_build(BuildConfig(memory_copy, num_shards=3), ray_executor)
    single_manifest = run_build(BuildConfig(single_root, num_shards=3), LocalExecutor())
    assert ray_manifest.factory == "IDMap2,Flat" and ray_manifest.count == 600
    assert [e.count for e in ray_manifest.shards] == [e.count for e in single_manifest.shards]
    assert [e.index_sha256 for e in ray_manifest.shards] == [e.index_sha256 for e in single_manifest.shards]

    queries = queries_of(embedded_memory)
    ray_scores, ray_ids = ShardedIndex(memory_copy, ray_manifest).search(queries, 10)
    single_scores, single_ids = ShardedIndex(single_root, single_manifest).search(queries, 10)
    np.testing.assert_array_equal(ray_ids, single_ids)
    np.testing.assert_array_equal(ray_scores, single_scores)

    ids, vectors, _ = load_embeddings(memory_copy)
    exact_scores, exact_ids = brute_force(ids, vectors, queries, 10)
    np.testing.assert_array_equal(ray_ids, exact_ids)  # sharded exact == one index over all
    np.testing.assert_allclose(ray_scores, exact_scores, atol=1e-5)


def _codes_by_id(index: faiss.Index) -> dict[int, bytes]:
    ivf = faiss.extract_index_ivf(index)
    lists, size = ivf.invlists, ivf.code_size
    out = {}
    for number in range(ivf.nlist):
        n = lists.list_size(number)
        if n:
            ids = faiss.rev_swig_ptr(lists.get_ids(number), n)
            codes = faiss.rev_swig_ptr(lists.get_codes(number), n * size)
            out.update({int(i): bytes(codes[j * size:(j + 1) * size]) for j, i in enumerate(ids)})
    return out


def test_ivfpq_ray_build_has_identical_codes_to_single_process(memory_copy, ray_executor, tmp_path):
    import shutil

    single_root = str(tmp_path / "single")
    shutil.copytree(memory_copy, single_root)
    config = dict(num_shards=2, factory="IVF8,PQ16x8", seed=7)
    ray_manifest = run_build(BuildConfig(memory_copy, add_threads=2, **config), ray_executor)
    single_manifest = run_build(BuildConfig(single_root, **config), LocalExecutor())
    # one add task per node with both CPUs as FAISS threads == one thread a task (the default
    # with a flat quantizer: factory.add_threads), code for code
    assert (ray_manifest.details["add_threads"], single_manifest.details["add_threads"]) == (2, 1)
    for ray_entry, single_entry in zip(ray_manifest.shards, single_manifest.shards):
        ray_codes = _codes_by_id(load_index(memory_copy, ray_entry))
        assert ray_codes == _codes_by_id(load_index(single_root, single_entry))
        assert len(ray_codes) == ray_entry.count > 0


@pytest.mark.parametrize("keep_vectors, floor", [("none", 0.60), ("fp16", 0.95)])
def test_ivfpq_recall_at_10_against_brute_force(embedded_memory, memory_copy, keep_vectors, floor):
    """Stated floors: PQ16 codes alone cap recall on 1280-d vectors (0.60 floor); exact
    re-ranking of 4k PQ candidates with fp16 vectors restores it (0.95 floor)."""
    manifest = run_build(BuildConfig(memory_copy, num_shards=2, factory="IVF8,PQ16x8",
                                     keep_vectors=keep_vectors, recall_target=0.95), LocalExecutor())
    assert manifest.search_defaults["nprobe"] in (1, 2, 4, 8)
    queries = queries_of(embedded_memory)
    _, found = ShardedIndex(memory_copy, manifest).search(queries, 10)
    ids, vectors, _ = load_embeddings(memory_copy)
    _, exact = brute_force(ids, vectors, queries, 10)
    assert recall_at(found, exact) >= floor


def test_mixed_encoders_are_refused(memory_copy):
    import pyarrow.parquet as pq

    from pipelines.manifest import BatchManifest, embeddings_dir
    from pipelines.schema import embedding_batch

    batch = embedding_batch([1, 2], ["a", "b"], ["x", "y"], ["s", "s"], ["h", "h"],
                            np.eye(2, 8, dtype=np.float32), "open_clip:ViT-B-32")
    directory = embeddings_dir(memory_copy, "other")
    import os

    os.makedirs(directory)
    pq.write_table(__import__("pyarrow").Table.from_batches([batch]), f"{directory}/part-x.parquet")
    BatchManifest("other", "x", "now", "open_clip:ViT-B-32", 8,
                  files=[{"path": "part-x.parquet", "rows": 2}]).write(memory_copy)
    with pytest.raises(IncompatibleBatches, match="open_clip:ViT-B-32"):
        run_build(BuildConfig(memory_copy), LocalExecutor())
    assert read_latest(memory_copy) is None


def test_duplicate_ids_across_batches_are_refused(embedded_memory, tmp_path):
    """Ids hash batch + shard + key (issue 12), so re-ingesting a shard into another batch
    makes new ids; two batches that do hold the same ids (an import of the same rows, a
    hand-written batch) are refused by the build, naming how many collide."""
    import shutil

    import pyarrow.parquet as pq

    from pipelines.manifest import (BatchManifest, embeddings_dir, list_batches, read_embeddings,
                                    write_embedding_batch)

    root = tmp_path / "dupes"
    shutil.copytree(embedded_memory / "memory", root)
    first = BatchManifest.read(str(root), list_batches(str(root))[0])
    table = read_embeddings(str(root), first.batch).slice(0, 200)
    write_embedding_batch(str(root), "again", table, first.encoder, "test")
    assert pq.read_metadata(f"{embeddings_dir(str(root), 'again')}/part-again-00000.parquet").num_rows == 200
    with pytest.raises(DuplicateIds, match="200 ids occur more than once"):
        run_build(BuildConfig(str(root)), LocalExecutor())


def test_failed_build_leaves_latest_intact(memory_copy, monkeypatch):
    first = run_build(BuildConfig(memory_copy), LocalExecutor())
    from indexer import build

    def crash(*args, **kwargs):
        raise OSError("disk full while writing the manifest")

    monkeypatch.setattr(build.IndexManifest, "write", crash)
    with pytest.raises(OSError, match="disk full"):
        run_build(BuildConfig(memory_copy, num_shards=2), LocalExecutor())
    assert read_latest(memory_copy) == first.version
    assert list_versions(memory_copy) == [first.version]  # the partial one is invisible
    assert ShardedIndex(memory_copy, resolve_version(memory_copy)).search(
        np.eye(1, 1280, dtype=np.float32), 3)[1].shape == (1, 3)


def test_killed_build_leaves_a_complete_latest(memory_copy):
    """SIGKILL a real build process as soon as its new version folder appears: LATEST still
    names a complete version whose every file verifies."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from indexer.store import verify_version

    first = run_build(BuildConfig(memory_copy), LocalExecutor())
    process = subprocess.Popen([sys.executable, "-m", "indexer", "build", "--memory", memory_copy,
                                "--shards", "4", "--no-ray", "--log-level", "WARNING"])
    deadline = time.monotonic() + 120
    index_dir = os.path.join(memory_copy, "index")
    while time.monotonic() < deadline and process.poll() is None:
        if len([n for n in os.listdir(index_dir) if n != "LATEST" and not n.startswith(".")]) > 1:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    latest = resolve_version(memory_copy)
    assert latest.version in list_versions(memory_copy)
    assert verify_version(memory_copy, latest) >= 2
    assert latest.version == first.version or latest.count == 600


@pytest.mark.parametrize("factory", ["OPQ8,IVF16,PQ8x8", "OPQ8_32,IVF16,PQ8x8"])
def test_opq_factory_builds_and_searches(tmp_path, factory):
    """OPQ through the build path (the second rotation also keeps 32 of the 64 dimensions, as
    the auto factory's OPQ{m}_{4m} does), on 2 shards with an online add and exact re-ranking."""
    from bench.synthetic import mixture, write_batch
    from indexer.edit import run_add
    from indexer.factory import OPQ_ITERATIONS, make_index

    untrained = make_index(factory, 64)  # referenced while its transform is read
    assert faiss.downcast_VectorTransform(faiss.downcast_index(untrained).chain.at(0)).niter == OPQ_ITERATIONS
    vectors = mixture(3200, 64, clusters=30, seed=3)
    root = str(tmp_path / "opq")
    write_batch(root, "synthetic", vectors[:3000], parts=2)
    manifest = run_build(BuildConfig(root, num_shards=2, factory=factory, keep_vectors="fp16"),
                         LocalExecutor())
    write_batch(root, "more", vectors[3000:], parts=1, first_id=3001)
    manifest = run_add(root, ["more"], LocalExecutor())
    index = ShardedIndex(root, manifest)
    _, found = index.search(vectors[2950:3050], 5)
    assert manifest.search_defaults["nprobe"] >= 1 and manifest.count == 3200
    assert (found[:, 0] == np.arange(2951, 3051)).mean() >= 0.95  # each vector finds itself first
    _, exact = index.search(vectors[2950:3050], 5, rerank=True)
    assert (exact[:, 0] == np.arange(2951, 3051)).all()


@pytest.mark.parametrize("factory", ["IVF16,PQ8x8", "OPQ8,IVF16,PQ8x8", "PQ8x8", "IVF16_HNSW32,PQ8x8"])
def test_pq_indexes_skip_polysemous_training(factory):
    """faiss's factory turns polysemous training on for PQ{m}x8 (a fixed ~3.7 CPU-s per
    sub-quantizer for Hamming filtering nothing here uses); the project's indexes leave it off."""
    from indexer.factory import make_index

    index = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    ours = make_index(factory, 32)

    def pq_holder(index):
        ivf = faiss.try_extract_index_ivf(index)
        inner = faiss.downcast_index(ivf if ivf is not None else index)
        return faiss.downcast_index(inner.index) if isinstance(inner, faiss.IndexPreTransform) else inner

    assert pq_holder(index).do_polysemous_training  # faiss's default, so the check can fail
    assert not pq_holder(ours).do_polysemous_training


def test_opq_rotation_with_too_few_vectors_is_a_clear_error(memory_copy):
    with pytest.raises(ValueError, match="needs at least 1280 training vectors"):
        run_build(BuildConfig(memory_copy, factory="OPQ16,IVF8,PQ16x8"), LocalExecutor())


def test_vectors_for_a_reranker_exact_from_flat_or_kept_and_refused_from_pq(embedded_memory, memory_copy):
    """Flat indexes reconstruct exactly; IVF-PQ returns kept vectors, and without them refuses
    with the fix named (never silently approximate)."""
    ids, vectors, _ = load_embeddings(memory_copy)
    pick = ids[[0, 7, 42]]
    flat = ShardedIndex(memory_copy, run_build(BuildConfig(memory_copy, num_shards=2), LocalExecutor()))
    shard = next(s for s in flat.shards if (s.rows_of(pick[:1]) >= 0).all())
    got = shard.vectors_of(np.array([pick[0], -1]))
    assert np.allclose(got[0], vectors[0], atol=1e-6) and not got[1].any()
    kept = ShardedIndex(memory_copy, run_build(BuildConfig(memory_copy, factory="IVF16,PQ16x4",
                                                           keep_vectors="fp32"), LocalExecutor()))
    assert np.allclose(kept.shards[0].vectors_of(pick), vectors[[0, 7, 42]], atol=1e-6)
    bare = ShardedIndex(memory_copy, run_build(BuildConfig(memory_copy, factory="IVF16,PQ16x4"), LocalExecutor()))
    with pytest.raises(ValueError, match="keep-vectors"):
        bare.shards[0].vectors_of(pick)
