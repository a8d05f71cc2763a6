"""Forget by key through each segment's key index (indexer/keyindex.py): O(keys log N), every
item under a key found whichever batch holds it, segments without an index scanned."""
from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa

from indexer import keyindex
from indexer.build import BuildConfig, run_build
from indexer.edit import ForgetRequest, resolve_forget, run_delete
from indexer.executor import LocalExecutor
from indexer.segments import segment_key_index
from pipelines.manifest import write_embedding_batch
from pipelines.records import ID_SCHEME_ITEM, item_id
from pipelines.schema import embedding_batch

LOCAL = LocalExecutor()


def test_key_hashes_are_pinned_and_lookups_return_every_id_of_a_key():
    # a stored index must mean the same forever: the hash is blake2b-64, pinned here
    assert keyindex.key_hash("000000000") == 4443790113420767133
    assert keyindex.key_hash("") == 7252660547403494068
    keys = pa.array(["a", "b", "a", None, "c"])
    pairs = keyindex.key_index(keys, np.array([50, 40, 30, 20, 10]))
    assert pairs.dtype == np.int64 and pairs.shape == (5, 2)
    assert (np.diff(pairs[:, 0]) >= 0).all()
    assert keyindex.ids_of(pairs, ["a"]).tolist() == [30, 50]
    assert keyindex.ids_of(pairs, ["a", "c", "zzz"]).tolist() == [10, 30, 50]
    assert keyindex.ids_of(pairs, []).tolist() == []


def test_keys_hashed_in_slices_index_as_one_pass_over_a_chunked_column(monkeypatch):
    """The key index hashes HASH_BATCH keys at a time (bounded Python objects): slices that
    cross chunk boundaries, nulls included, give the same rows as hashing every key at once."""
    rng = np.random.default_rng(4)
    words = [None if r < 0.1 else f"key-{int(r * 1000)}" for r in rng.random(1_000)]
    keys = pa.chunked_array([pa.array(words[:333]), pa.array(words[333:334]), pa.array(words[334:])])
    ids = rng.permutation(1_000).astype(np.int64) + 1
    hashes = np.array([keyindex.key_hash(k or "") for k in words], dtype=np.int64)
    order = np.lexsort((ids, hashes))
    expected = np.stack([hashes[order], ids[order]], axis=1)
    for batch in (7, 334, 1 << 16):
        monkeypatch.setattr(keyindex, "HASH_BATCH", batch)
        np.testing.assert_array_equal(keyindex.key_index(keys, ids), expected)


def _batch(root: str, name: str, keys: list[str], seed: int) -> list[int]:
    vectors = np.random.default_rng(seed).standard_normal((len(keys), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [item_id(name, f"{name}.tar", k) for k in keys]
    table = pa.Table.from_batches([embedding_batch(
        ids, keys, ["x"] * len(keys), [""] * len(keys), [f"{name}-{k}" for k in keys], vectors,
        "test-encoder")])
    write_embedding_batch(root, name, table, "test-encoder", "test", id_scheme=ID_SCHEME_ITEM)
    return ids


def test_forget_by_key_uses_the_index_and_scans_segments_without_one(tmp_path):
    root = str(tmp_path / "memory")
    keys = [f"{i:09d}" for i in range(40)]
    first, second = _batch(root, "run-a", keys, 1), _batch(root, "run-b", keys[:20], 2)
    manifest = run_build(BuildConfig(root, num_shards=2), LOCAL)
    segments = [s for entry in manifest.shards for s in entry.segments]
    assert all(s.keys_path for s in segments)
    assert sum(len(segment_key_index(root, s)) for s in segments) == 60

    request = ForgetRequest(keys=["000000003", "000000031", "missing"])
    ids, found = resolve_forget(root, manifest, request)
    assert sorted(ids.tolist()) == sorted([first[3], second[3], first[31]])
    assert found["not_found"]["keys"] == ["missing"]

    old = copy.deepcopy(manifest)  # as written before key indexes: the key column is scanned
    for entry in old.shards:
        for segment in entry.segments:
            segment.keys_path = segment.keys_sha256 = ""
    assert resolve_forget(root, old, request)[0].tolist() == ids.tolist()

    deleted, report = run_delete(root, request, LOCAL)
    assert report["removed"] == 3 and deleted.count == 57
    again, _ = resolve_forget(root, deleted, request)  # tombstoned: no longer named
    assert again.tolist() == []
