"""The indexer's units of work: numpy/Arrow in, numpy/Arrow/files out; no Ray imports here."""
from __future__ import annotations

import io
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa

from indexer.checksums import sha256_bytes
from indexer.manifest import ShardEntry
from indexer.metadata import SUFFIX as METADATA_SUFFIX
from indexer.metadata import ipc_bytes, sorted_by_id, with_weights
from indexer.reader import Part, read_part
from pipelines import storage

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


def _write(url: str, data: bytes) -> str:
    storage.write_bytes_atomic(url, data)
    return sha256_bytes(data)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_shard(index_root: str, version: str, shard: int, index: faiss.Index | None,
                meta: pa.Table, vectors: np.ndarray | None,
                reuse_index: ShardEntry | None = None) -> ShardEntry:
    """Write one shard's files (each atomically) with metadata and vectors sorted by id;
    ``reuse_index`` points the new entry at an existing, unchanged index file instead."""
    meta, order = sorted_by_id(with_weights(meta))
    stem = f"{version}/shard-{shard:05d}"
    if reuse_index is not None:
        count, index_path, index_sha = reuse_index.count, reuse_index.index_path, reuse_index.index_sha256
    else:
        count, index_path = int(index.ntotal), f"{stem}.faiss"
        index_sha = _write(storage.join(index_root, index_path), faiss.serialize_index(index).tobytes())
    entry = ShardEntry(
        shard=shard, count=count, index_path=index_path, index_sha256=index_sha,
        metadata_path=f"{stem}{METADATA_SUFFIX}",
        metadata_sha256=_write(storage.join(index_root, f"{stem}{METADATA_SUFFIX}"), ipc_bytes(meta)))
    if vectors is not None:
        entry.vectors_path = f"{stem}.vectors.npy"
        entry.vectors_sha256 = _write(storage.join(index_root, entry.vectors_path),
                                      _npy_bytes(np.ascontiguousarray(vectors[order])))
    if entry.count != meta.num_rows:
        raise RuntimeError(f"shard {shard}: index holds {entry.count} vectors, metadata {meta.num_rows}")
    return entry


def merge_shard(index_root: str, version: str, shard: int, *pieces: ShardPiece) -> ShardEntry:
    """Merge the parts' pieces of one shard, in part order (deterministic), and write it."""
    index = faiss.deserialize_index(pieces[0].index)
    for piece in pieces[1:]:
        index.merge_from(faiss.deserialize_index(piece.index), 0)
    meta = pa.concat_tables([piece.meta for piece in pieces])
    vectors = (np.concatenate([piece.vectors for piece in pieces])
               if pieces[0].vectors is not None else None)
    return write_shard(index_root, version, shard, index, meta, vectors)


def stored_ids(index: faiss.Index) -> np.ndarray:
    """Every id physically present in an index's storage (IVF lists or the IDMap)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        lists = ivf.invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(l), lists.list_size(l)).copy()
                 for l in range(ivf.nlist) if lists.list_size(l)]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map)
    raise TypeError(f"cannot list the ids of a {type(index).__name__}")


def empty_like(index: faiss.Index) -> np.ndarray:
    """The trained, empty index behind a built shard (quantizer and codebooks kept)."""
    empty = faiss.clone_index(index)
    empty.reset()
    return faiss.serialize_index(empty)


def edit_shard(root: str, version: str, entry: ShardEntry, remove: np.ndarray,
               pieces: list[ShardPiece], weights: tuple[np.ndarray, np.ndarray] | None) -> ShardEntry:
    """A new version of one shard: ids removed (physically), pieces added, weights set.
    An untouched shard keeps its parent's entry: its files are shared, not copied."""
    from indexer.layout import index_root
    from indexer.store import load_index, load_metadata, load_vectors

    meta = with_weights(load_metadata(root, entry))
    ids = meta.column("id").to_numpy()
    removing = np.isin(ids, remove) if len(remove) else np.zeros(len(ids), bool)
    if not removing.any() and not pieces and weights is None:
        return entry
    vectors = load_vectors(root, entry)
    if not removing.any() and not pieces:  # weights only: the index file is shared
        return write_shard(index_root(root), version, entry.shard, None, set_weights(
            with_weights(meta), *weights), vectors, reuse_index=entry)
    index = load_index(root, entry, mmap=False)
    if removing.any():
        index.remove_ids(faiss.IDSelectorBatch(ids[removing]))
        keep = pa.array(np.flatnonzero(~removing))
        meta, vectors = meta.take(keep), (vectors[~removing] if vectors is not None else None)
    for piece in pieces:
        index.merge_from(faiss.deserialize_index(piece.index), 0)
        meta = pa.concat_tables([meta, with_weights(piece.meta)])
        if vectors is not None:
            vectors = np.concatenate([vectors, piece.vectors.astype(vectors.dtype)])
    if weights is not None:
        meta = set_weights(meta, *weights)
    return write_shard(index_root(root), version, entry.shard, index, meta, vectors)


def set_weights(meta: pa.Table, ids: np.ndarray, weights: np.ndarray) -> pa.Table:
    """Per-item weights (soft pruning) for the given ids; other rows keep theirs."""
    current = with_weights(meta).column("weight").to_numpy().astype(np.float64, copy=True)
    order = np.argsort(ids)
    sorted_ids, sorted_weights = ids[order], weights[order]
    rows = np.searchsorted(sorted_ids, meta.column("id").to_numpy())
    rows = np.minimum(rows, len(sorted_ids) - 1)
    hit = sorted_ids[rows] == meta.column("id").to_numpy()
    current[hit] = np.asarray(sorted_weights, dtype=np.float64)[rows[hit]]
    meta = with_weights(meta)
    return meta.set_column(meta.column_names.index("weight"), "weight", pa.array(current))
