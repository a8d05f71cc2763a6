"""A segment's key index: every item's key hash next to its id, sorted, so "forget key K" finds
K's items in O(log N) per key instead of scanning the key column.

Ids hash (batch, shard, key) (pipelines/records.py), so a key is not its id: two runs may
both hold ``000000000``. Each segment therefore stores ``<stem>.keys.npy``: an (n, 2) int64
array of (blake2b-64 of the UTF-8 key, id) rows sorted by hash then id. A lookup hashes the
asked keys, binary-searches the hashes and returns the ids of every row whose hash matches;
the caller checks each id's stored key (a hash collision returns a stray id, never misses
one). Written with the segment (build, add, compaction), read only by edits: searchers never
load it. Segments written before it existed have none (``SegmentEntry.keys_path`` empty): the
caller scans their key column instead.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

SUFFIX = ".keys.npy"
HASH_BATCH = 1 << 16  # keys hashed per slice (bounded Python objects)


def key_hash(key: str) -> int:
    """A 63-bit hash of ``key`` (blake2b, 8 bytes, top bit cleared): stable across processes,
    platforms and library versions."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def key_index(keys: pa.Array | pa.ChunkedArray, ids: np.ndarray) -> np.ndarray:
    """(n, 2) int64 (key hash, id) rows sorted by hash, then id, for the n items of a segment
    (``keys`` and ``ids`` row-aligned; a null key hashes as ""). O(n) hashes: ~1 s per
    million keys, taken ``HASH_BATCH`` keys at a time, so that at most that many are Python
    strings at once (measured: one list of 2M nine-character keys peaked 136 MB above the
    column, these slices 83 MB, the arrays below)."""
    hashes = np.empty(len(keys), dtype=np.int64)
    for start in range(0, len(keys), HASH_BATCH):
        batch = keys.slice(start, HASH_BATCH).to_pylist()
        hashes[start:start + len(batch)] = np.fromiter((key_hash(k or "") for k in batch),
                                                       dtype=np.int64, count=len(batch))
    ids = np.asarray(ids, dtype=np.int64)
    order = np.lexsort((ids, hashes))
    return np.stack([hashes[order], ids[order]], axis=1)


def ids_of(pairs: np.ndarray, keys: list[str]) -> np.ndarray:
    """Sorted unique ids whose key hash equals that of one of ``keys`` (a superset of the
    items stored under them: check their keys). O(len(keys) · log n)."""
    if not len(keys) or not len(pairs):
        return np.empty(0, np.int64)
    wanted = np.unique(np.asarray([key_hash(k) for k in keys], dtype=np.int64))
    hashes = pairs[:, 0]
    starts = np.searchsorted(hashes, wanted, side="left")
    ends = np.searchsorted(hashes, wanted, side="right")
    found = [pairs[s:e, 1] for s, e in zip(starts.tolist(), ends.tolist()) if e > s]
    return np.unique(np.concatenate(found)) if found else np.empty(0, np.int64)
