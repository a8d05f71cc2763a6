"""The indexer's units of work: numpy/Arrow in, numpy/Arrow/files out; no Ray imports here."""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa

from indexer.manifest import ShardEntry
from indexer.metadata import with_weights
from indexer.reader import Part, read_part
from indexer.segments import Shard, stored_ids, write_segment  # noqa: F401 (stored_ids: re-export)

VECTOR_DTYPES = {"none": None, "fp16": np.float16, "fp32": np.float32}


@dataclass
class ShardPiece:
    """What one part contributes to one shard: a small index of the same trained kind, its
    rows' metadata and (for exact re-ranking) their vectors, all in the same row order."""

    index: np.ndarray  # faiss.serialize_index bytes
    meta: pa.Table
    vectors: np.ndarray | None


def shard_of(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """Stable assignment: ids are hashes, so id mod S balances and never moves an item."""
    return (ids % num_shards).astype(np.int64)


def sample_part(part: Part, probability: float, seed: int, part_number: int) -> np.ndarray:
    """A seeded Bernoulli sample of one part's vectors (deterministic per part)."""
    _, vectors = read_part(part)
    keep = np.random.default_rng([seed, part_number]).random(len(vectors)) < probability
    return vectors[keep]


def split_into_pieces(empty: faiss.Index, meta: pa.Table, vectors: np.ndarray, num_shards: int,
                      keep_vectors: str) -> list[ShardPiece]:
    ids = meta.column("id").to_numpy()
    shards = shard_of(ids, num_shards)
    dtype = VECTOR_DTYPES[keep_vectors]
    pieces = []
    for shard in range(num_shards):
        rows = np.flatnonzero(shards == shard)
        index = faiss.clone_index(empty)
        if len(rows):
            index.add_with_ids(np.ascontiguousarray(vectors[rows]), ids[rows])
        pieces.append(ShardPiece(faiss.serialize_index(index), meta.take(pa.array(rows)),
                                 vectors[rows].astype(dtype) if dtype is not None else None))
    return pieces


def add_part(part: Part, trained: np.ndarray, num_shards: int, keep_vectors: str) -> list[ShardPiece]:
    """Encode one part onto copies of the trained empty index, one copy per serving shard."""
    meta, vectors = read_part(part)
    return split_into_pieces(faiss.deserialize_index(trained), meta, vectors, num_shards, keep_vectors)


def write_shard(index_root: str, version: str, shard: int, index: faiss.Index,
                meta: pa.Table, vectors: np.ndarray | None) -> ShardEntry:
    """A compacted shard (one base segment, no tombstones) written under ``<version>/``."""
    segment = write_segment(index_root, f"{version}/shard-{shard:05d}", index, meta, vectors)
    return ShardEntry(shard, segment.count, [segment])


def merge_shard(index_root: str, version: str, shard: int, *pieces: ShardPiece) -> ShardEntry:
    """Merge the parts' pieces of one shard, in part order (deterministic), and write it."""
    return write_shard(index_root, version, shard, *merge_pieces(list(pieces)))


def empty_like(index: faiss.Index) -> np.ndarray:
    """The trained, empty index behind a built shard (quantizer and codebooks kept)."""
    empty = faiss.clone_index(index)
    empty.reset()
    return faiss.serialize_index(empty)


def merge_pieces(pieces: list[ShardPiece]) -> tuple[faiss.Index, pa.Table, np.ndarray | None]:
    """The pieces of one shard as one index, metadata and vectors, in piece order."""
    index = faiss.deserialize_index(pieces[0].index)
    for piece in pieces[1:]:
        index.merge_from(faiss.deserialize_index(piece.index), 0)
    meta = pa.concat_tables([with_weights(piece.meta) for piece in pieces], promote_options="permissive")
    vectors = (np.concatenate([piece.vectors for piece in pieces])
               if pieces[0].vectors is not None else None)
    return index, meta, vectors


def add_segment(root: str, version: str, entry: ShardEntry, *pieces: ShardPiece) -> ShardEntry:
    """One delta segment of ``entry``'s shard holding the pieces (an add): O(rows added)."""
    index, meta, vectors = merge_pieces(list(pieces))
    return Shard(root, entry).add(version, index, meta, vectors)


def compact_shard(root: str, version: str, entry: ShardEntry) -> ShardEntry:
    """``Shard.compact`` as a task."""
    return Shard(root, entry).compact(version)


def tombstone_shard(root: str, version: str, entry: ShardEntry, ids: np.ndarray) -> ShardEntry:
    """``Shard.tombstone`` as a task."""
    return Shard(root, entry).tombstone(version, ids)


def weigh_shard(root: str, version: str, entry: ShardEntry, ids: np.ndarray,
                weights: np.ndarray) -> ShardEntry:
    """``Shard.set_weights`` as a task."""
    return Shard(root, entry).set_weights(version, ids, weights)
