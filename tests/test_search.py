"""The searcher's data plane: lean imports, memory-mapped files, per-call parameters under
concurrency, deterministic ties, O(k) metadata, and recall that a query really gets."""
from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from bench.synthetic import mixture, write_batch
from indexer.build import BuildConfig, run_build
from indexer.executor import LocalExecutor
from indexer.search import SearchParams, ShardedIndex, ShardSearcher
from indexer.store import resolve_version
from indexer.tuning import recall_at
from pipelines.manifest import write_embedding_batch
from pipelines.schema import embedding_batch
from serving.answers import answer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ivf_memory(tmp_path_factory) -> tuple[str, np.ndarray]:
    """20,000 clustered 64-d unit vectors (ids = row + 1) as IVF64,Flat, one shard."""
    vectors = mixture(20_000, 64, clusters=40, seed=11)
    root = str(tmp_path_factory.mktemp("ivf") / "memory")
    write_batch(root, "synthetic", vectors, parts=2)
    run_build(BuildConfig(root, factory="IVF64,Flat"), LocalExecutor())
    return root, vectors


@pytest.fixture(scope="module")
def pq_memory(tmp_path_factory) -> tuple[str, np.ndarray]:
    """IVF-PQ with fp16 re-rank vectors kept on disk, two shards; 200 more vectors of the
    same distribution are held out as queries (returned after the memory's vectors)."""
    vectors = mixture(12_200, 64, clusters=30, seed=5)
    root = str(tmp_path_factory.mktemp("pq") / "memory")
    write_batch(root, "synthetic", vectors[:12_000], parts=3)
    run_build(BuildConfig(root, num_shards=2, factory="IVF32,PQ8x8", keep_vectors="fp16"), LocalExecutor())
    return root, vectors


def test_a_searcher_process_imports_neither_torch_nor_beam(ivf_memory):
    """Load a shard, search it and serve its answer's metadata in a fresh interpreter: the
    whole searcher path, the router's module and the driver binding the Serve application
    (``build_app``, the encoder deployment included: torch loads in its replicas) must not
    pull torch or Beam."""
    root, vectors = ivf_memory
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from indexer.search import ShardSearcher
        from indexer.store import resolve_version
        from serving.answers import answer
        import serving.searchers, serving.router, serving.app
        manifest = resolve_version({root!r})
        searcher = ShardSearcher.load({root!r}, manifest, 0)
        query = np.asarray({vectors[:2].tolist()!r}, dtype=np.float32)
        found = answer(searcher, query, 5)
        app = serving.app.build_app({{"memory": {root!r}}})
        print(json.dumps({{"ids": found.ids[:, 0].tolist(), "app": type(app).__name__,
                          "heavy": sorted(m for m in ("torch", "apache_beam", "torchvision")
                                          if m in sys.modules)}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=True)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["ids"] == [1, 2]  # each vector finds itself (ids are row + 1)
    assert out["app"] == "Application" and out["heavy"] == []


def test_loading_maps_files_instead_of_copying_them(pq_memory):
    root, _ = pq_memory
    searcher = ShardSearcher.load(root, resolve_version(root), 0)
    assert isinstance(searcher.vectors, np.memmap) and searcher.vectors.dtype == np.float16
    assert not searcher.metadata.ids.flags.owndata  # a view of the memory-mapped Arrow buffer
    assert searcher.entry.metadata_path.endswith(".meta.arrow")
    assert searcher.meta.column("weight").type == pa.float64()


def test_answers_read_the_k_rows_they_return(pq_memory):
    """Each neighbour's metadata is the row of its id (checked against the whole table)."""
    root, vectors = pq_memory
    searcher = ShardSearcher.load(root, resolve_version(root), 1)
    found = answer(searcher, vectors[:3], 7)
    table = searcher.meta.to_pandas().set_index("id")
    for row in range(3):
        for column, neighbour in enumerate(found.ids[row]):
            if neighbour >= 0:
                assert found.meta["key"][row, column] == table.loc[neighbour, "key"]
                assert found.meta["label"][row, column] == table.loc[neighbour, "label"]
                assert found.meta["weight"][row, column] == 1.0


def test_concurrent_requests_with_different_nprobe_get_their_own(ivf_memory):
    """Three threads share one searcher, asking nprobe 64, 1 and the default: each answer
    equals the same request run alone (per-call SearchParametersIVF, no shared state)."""
    root, vectors = ivf_memory
    searcher = ShardSearcher.load(root, resolve_version(root), 0)
    queries = mixture(60, 64, clusters=40, seed=99)
    settings = (SearchParams(nprobe=64), SearchParams(nprobe=1), SearchParams())
    alone = {p: [searcher.search(q[None], 10, p)[1] for q in queries] for p in settings}
    assert not np.array_equal(np.concatenate(alone[settings[0]]), np.concatenate(alone[settings[1]]))

    def run(params: SearchParams) -> int:
        wrong = 0
        for _ in range(4):
            for q, expected in zip(queries, alone[params]):
                wrong += not np.array_equal(searcher.search(q[None], 10, params)[1], expected)
        return wrong

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        assert list(pool.map(run, settings)) == [0, 0, 0]


def test_nprobe_outside_one_to_nlist_is_refused(ivf_memory):
    root, vectors = ivf_memory
    searcher = ShardSearcher.load(root, resolve_version(root), 0)
    for nprobe in (-1, 65, 2**40):
        with pytest.raises(ValueError, match="nlist=64"):
            searcher.search(vectors[:1], 5, SearchParams(nprobe=nprobe))
    assert searcher.search(vectors[:1], 5, SearchParams(nprobe=64))[1][0, 0] == 1


def test_ties_give_the_same_topk_whatever_the_shard_count(tmp_path):
    """Six items with the same vector (labels A..F) among 200 others: every shard count
    returns the tie group in id order, and the top-k for k is a prefix of the top-(k+1)."""
    rng = np.random.default_rng(3)
    others = rng.standard_normal((200, 32)).astype(np.float32)
    duplicate = rng.standard_normal(32).astype(np.float32)
    vectors = np.concatenate([np.repeat(duplicate[None], 6, axis=0), others])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keys = [f"dup-{i}" for i in range(6)] + [f"other-{i}" for i in range(200)]
    labels = list("ABCDEF") + ["Z"] * 200
    ids = [int(i) for i in rng.choice(2**40, size=len(keys), replace=False)]
    tie_ids = sorted(ids[:6])
    results = {}
    for shards in (1, 2, 3):
        root = str(tmp_path / f"s{shards}")
        table = pa.Table.from_batches([embedding_batch(ids, keys, labels, keys, [""] * len(keys),
                                                       vectors, "synthetic")])
        write_embedding_batch(root, "b", table, "synthetic", "test")
        index = ShardedIndex(root, run_build(BuildConfig(root, num_shards=shards), LocalExecutor()))
        results[shards] = [index.search(vectors[:1], k)[1][0].tolist() for k in range(1, 9)]
    for shards, by_k in results.items():
        assert by_k == results[1], shards
        for k, found in enumerate(by_k, start=1):
            assert found[:min(k, 6)] == tie_ids[:k]
            assert found == by_k[-1][:k]  # prefix of the deeper answer


def test_recorded_recall_is_what_queries_get(pq_memory):
    """The build tunes nprobe on held-out queries against the built index, at k = 10 and
    100, with exact re-ranking from the memory-mapped vectors; an independent brute-force
    check on new queries agrees with what the manifest records."""
    root, vectors = pq_memory
    manifest = resolve_version(root)
    defaults = manifest.search_defaults
    assert defaults["recall_at_10"] >= 0.95 and defaults["recall_at_100"] >= 0.95
    assert manifest.details["tuning_reached_target"] and manifest.details["tuning_curve"]
    memory, queries = vectors[:12_000], vectors[12_000:]  # queries: held out, same distribution
    _, found = ShardedIndex(root, manifest).search(queries, 100)
    exact = np.argsort(-(queries @ memory.T), axis=1, kind="stable")[:, :100] + 1
    assert recall_at(found[:, :10], exact[:, :10]) >= 0.95
    assert recall_at(found, exact) >= 0.95


def test_the_router_refuses_nprobe_past_nlist_naming_the_field():
    from types import SimpleNamespace

    from serving.models import QueryRequest
    from serving.router import ApiError, Router

    router = SimpleNamespace(nlist=64)
    check = Router.func_or_class._nprobe
    assert check(router, QueryRequest(nprobe=64)) == 64 and check(router, QueryRequest()) == 0
    with pytest.raises(ApiError) as error:
        check(router, QueryRequest(nprobe=65), "queries.3.")
    assert (error.value.status, error.value.field) == (422, "queries.3.nprobe")
    assert check(SimpleNamespace(nlist=0), QueryRequest(nprobe=7)) == 0  # exact: nothing to probe


def test_half_to_float_is_exact_for_every_finite_value():
    from indexer.halffloat import to_float32

    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)]
    converted = to_float32(finite.reshape(-1, 8) if len(finite) % 8 == 0 else finite)
    expected = finite.astype(np.float32).reshape(converted.shape)
    assert converted.dtype == np.float32
    assert np.array_equal(converted.view(np.uint32), expected.view(np.uint32))  # -0.0 too
    with pytest.raises(TypeError):
        to_float32(np.zeros(3, dtype=np.int16))


def test_reranked_scores_are_exact_dot_products_of_the_stored_vectors(pq_memory):
    """The re-rank reads fp16 rows from the memory-mapped file: every returned score is the
    float32 dot product of the query with that item's stored vector (ids are row + 1)."""
    root, vectors = pq_memory
    stored = vectors[:12_000].astype(np.float16).astype(np.float32)
    queries = vectors[12_000:12_020]
    scores, ids = ShardedIndex(root, resolve_version(root)).search(queries, 30,
                                                                   SearchParams(rerank=True))
    assert (ids >= 1).all()
    expected = np.einsum("qkd,qd->qk", stored[ids - 1], queries)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_a_segment_cache_retains_while_loads_insert(monkeypatch):
    """SegmentCache.retain (a switch, on the event loop) while loads insert from threads (a
    degraded group's retry, a switch's probe): no "dictionary changed size during iteration"."""
    from indexer import search
    from indexer.search import SegmentCache

    monkeypatch.setattr(search.SegmentSearcher, "load",
                        staticmethod(lambda *args: SimpleNamespace(defaults=args[2])))
    cache, errors, stop = SegmentCache(), [], threading.Event()

    def load() -> None:
        number = 0
        while not stop.is_set():
            number += 1
            entry = SimpleNamespace(index_path=f"s{number}.faiss", index_sha256="a",
                                    metadata_path=f"s{number}.arrow", metadata_sha256="b")
            cache.segment("root", entry, "defaults", False, True)

    loaders = [threading.Thread(target=load) for _ in range(2)]
    for thread in loaders:
        thread.start()
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                cache.retain([])
                cache.aside()
            except RuntimeError as error:
                errors.append(error)
    finally:
        stop.set()
        for thread in loaders:
            thread.join()
    assert errors == []
