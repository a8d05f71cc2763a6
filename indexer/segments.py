"""The segment model: a shard is immutable segments plus tombstones; edits cost what they change.

A shard of a version (``ShardEntry``) is

- **segments**: the base segment written by a build or a compaction, then delta segments, one
  per add that reached the shard. Every segment is a small FAISS index of the version's one
  trained kind (same coarse quantizer and codebooks: encoding needs no retraining), its
  metadata (Arrow IPC, sorted by id) and, when the memory re-ranks, its vectors.
- **tombstones**: sorted id files, one per delete that reached the shard. A tombstone hides its
  ids in the segments that existed when it was written (``TombstoneEntry.segments``).

``Shard`` is the object that edits one shard. ``add`` writes one delta segment: cost
O(items added). ``tombstone`` writes one id file: cost O(items deleted). ``compact`` merges
every segment into one and drops tombstoned rows physically: cost O(shard), run by
``vmem index compact`` and automatically past ``CompactionPolicy`` (indexer/edit.py). Search
applies tombstones with a FAISS ID selector, so the top-k stays full and exact
(indexer/search.py). Every method returns the new ``ShardEntry``; nothing is written in place.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Sequence

import faiss
import numpy as np
import pyarrow as pa

from indexer import keyindex
from indexer.checksums import sha256_bytes, sha256_file
from indexer.manifest import SegmentEntry, ShardEntry, TombstoneEntry
from indexer.metadata import SUFFIX as METADATA_SUFFIX
from indexer.metadata import ipc_bytes, with_weights, write_sorted_ipc
from indexer.quantizer import merge_lists, write_stripped
from pipelines import storage

TOMBSTONE_SUFFIX = ".tombstones.npy"


@dataclass(frozen=True)
class CompactionPolicy:
    """When an edit also compacts a shard (Milvus and Lucene compact on similar triggers):
    tombstoned rows over ``max_tombstone_fraction`` of the stored rows, or more than
    ``max_segments`` segments."""

    max_tombstone_fraction: float = 0.10
    max_segments: int = 8

    def due(self, entry: ShardEntry) -> bool:
        stored = max(entry.stored, 1)
        return (entry.tombstoned / stored > self.max_tombstone_fraction
                or len(entry.segments) > self.max_segments)


DEFAULT_POLICY = CompactionPolicy()


def _write(index_root: str, path: str, data: bytes) -> str:
    storage.write_bytes_atomic(storage.join(index_root, path), data)
    return sha256_bytes(data)


def _write_file(index_root: str, path: str, write: Callable[[str], None]) -> str:
    """Write a file with ``write(local_path)`` (atomically, streamed: no copy in memory) and
    return its SHA-256, read back from storage."""
    url = storage.join(index_root, path)
    storage.write_file_atomic(url, write)
    return sha256_file(url)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _save_npy(array: np.ndarray, path: str) -> None:
    with open(path, "wb") as handle:  # a path given to np.save would gain a ".npy" suffix
        np.save(handle, array, allow_pickle=False)


GATHER_BYTES = 8 << 20  # rows of vectors _gather_rows moves at once, in bytes


def _gather_rows(sources: Sequence[np.ndarray], order: np.ndarray, dtype, path: str) -> None:
    """Write rows ``order`` of the sources stacked (row i of the stack: source j's row i -
    offset j) to the .npy file ``path``, ``GATHER_BYTES`` of rows at a time: never a stacked
    copy."""
    sizes = np.array([len(source) for source in sources], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    dim = sources[0].shape[1]
    chunk_rows = max(1, GATHER_BYTES // (dim * np.dtype(dtype).itemsize))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(len(order), dim))
    for begin in range(0, len(order), chunk_rows):
        rows = order[begin:begin + chunk_rows]
        which = np.searchsorted(starts, rows, side="right") - 1
        chunk = np.empty((len(rows), dim), dtype=dtype)
        for number in np.unique(which):
            mine = which == number
            chunk[mine] = sources[number][rows[mine] - starts[number]]
        out[begin:begin + len(rows)] = chunk
    out.flush()
    del out


def write_segment(index_root: str, stem: str, index: faiss.Index, meta: pa.Table,
                  vectors: np.ndarray | Sequence[np.ndarray] | None,
                  vector_rows: np.ndarray | None = None) -> SegmentEntry:
    """Write one segment's files (each atomically, streamed to storage) under
    ``ROOT/index/<stem>.*``: its rows (``write_segment_rows``), then the index stripped of its
    coarse quantizer (``write_segment_index``). Raises DuplicateIds when an id occurs twice,
    RuntimeError when the index and the metadata disagree on the row count."""
    return write_segment_index(index_root, stem, index,
                               write_segment_rows(index_root, stem, meta, vectors, vector_rows))


def write_segment_rows(index_root: str, stem: str, meta: pa.Table,
                       vectors: np.ndarray | Sequence[np.ndarray] | None,
                       vector_rows: np.ndarray | None = None) -> SegmentEntry:
    """The row files of a segment under ``ROOT/index/<stem>.*``: metadata sorted by id
    (float64 weights; metadata.write_sorted_ipc: one column in memory at a time), vectors in
    the same row order, the key index. ``vectors`` is an (n, d) array or a list of arrays
    whose stacked rows align with ``meta`` (pieces: possibly memory-mapped, gathered in
    chunks), or, with ``vector_rows`` ((len(meta),) int64), hold meta row i's vector at
    stacked row ``vector_rows[i]`` (a compaction: the segments' files whole, the rows it
    keeps). The entry's ``index_sha256`` is empty until ``write_segment_index`` writes the
    index, so a merge holds one shard's metadata or its codes, never both. Raises
    DuplicateIds when an id occurs twice (nothing written then)."""
    from indexer.reader import DuplicateIds

    meta = with_weights(meta)
    ids = meta.column("id").to_numpy()
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    del ordered
    if len(repeated):
        raise DuplicateIds(f"{len(np.unique(repeated))} ids occur more than once in {stem} "
                           f"(e.g. {np.unique(repeated)[:5].tolist()}): the same key ingested "
                           "in two batches?")
    segment = SegmentEntry(
        count=len(ids), index_path=f"{stem}.faiss", index_sha256="",
        metadata_path=f"{stem}{METADATA_SUFFIX}",
        metadata_sha256=_write_file(index_root, f"{stem}{METADATA_SUFFIX}",
                                    lambda path: write_sorted_ipc(meta, order, path)))
    if vectors is not None:
        sources = [vectors] if isinstance(vectors, np.ndarray) else list(vectors)
        segment.vectors_path = f"{stem}.vectors.npy"
        segment.vectors_sha256 = _write_file(
            index_root, segment.vectors_path,
            lambda path: _gather_rows(sources, order if vector_rows is None else vector_rows[order],
                                      sources[0].dtype, path))
    del order
    segment.keys_path = f"{stem}{keyindex.SUFFIX}"
    keys = keyindex.key_index(meta.column("key"), ids)  # sorted by (hash, id): row order moot
    segment.keys_sha256 = _write_file(index_root, segment.keys_path, lambda path: _save_npy(keys, path))
    return segment


def write_segment_index(index_root: str, stem: str, index: faiss.Index,
                        segment: SegmentEntry) -> SegmentEntry:
    """``segment`` (from ``write_segment_rows``) completed with its index file, stripped of
    the coarse quantizer (indexer/quantizer.py). Raises RuntimeError when the index does not
    hold exactly the segment's rows."""
    if int(index.ntotal) != segment.count:
        raise RuntimeError(f"{stem}: index holds {index.ntotal} vectors, metadata {segment.count}")
    segment.index_sha256 = _write_file(index_root, f"{stem}.faiss",
                                       lambda path: write_stripped(index, path))
    return segment


_OPENED: dict[tuple[str, str, str], object] = {}  # (root, path, sha256) -> ShardMetadata
_OPENED_MAX = 256


def segment_metadata(root: str, segment: SegmentEntry):
    """A segment's metadata as a ``ShardMetadata`` (memory-mapped, verified once), kept open
    per process: segments are immutable, so a long-lived writer reads each file's id column
    once, and an edit's lookups cost O(ids · log N), not a re-open and re-check of N rows."""
    from indexer.metadata import ShardMetadata
    from indexer.store import load_metadata

    key = (root, segment.metadata_path, segment.metadata_sha256)
    if key not in _OPENED:
        if len(_OPENED) >= _OPENED_MAX:
            _OPENED.pop(next(iter(_OPENED)))
        _OPENED[key] = ShardMetadata(load_metadata(root, segment))
    return _OPENED[key]


def segment_key_index(root: str, segment: SegmentEntry) -> np.ndarray | None:
    """A segment's (key hash, id) pairs (indexer/keyindex.py), verified and memory-mapped once
    per process; None for a segment written without one."""
    from indexer.store import load_key_index

    if not segment.keys_path:
        return None
    key = (root, segment.keys_path, segment.keys_sha256)
    if key not in _OPENED:
        if len(_OPENED) >= _OPENED_MAX:
            _OPENED.pop(next(iter(_OPENED)))
        _OPENED[key] = load_key_index(root, segment)
    return _OPENED[key]


class Shard:
    """One shard of a published version, to edit: reads its files from ``root`` (any fsspec
    URL) and writes new files under ``ROOT/index/<version>/``. Immutable: every edit returns
    a new ``ShardEntry`` for the next version's manifest."""

    def __init__(self, root: str, entry: ShardEntry) -> None:
        from indexer.layout import index_root

        self.root, self.entry, self.index_root = root, entry, index_root(root)

    def _stem(self, version: str, kind: str) -> str:
        return f"{version}/shard-{self.entry.shard:05d}{kind}"

    # ---- reading -------------------------------------------------------------------------
    def segment_ids(self, number: int) -> np.ndarray:
        """Sorted ids stored in segment ``number`` (tombstoned included)."""
        return segment_metadata(self.root, self.entry.segments[number]).ids

    def hidden(self, number: int) -> np.ndarray:
        """Sorted ids tombstoned in segment ``number``."""
        from indexer.store import load_tombstones

        parts = [load_tombstones(self.root, t) for t in self.entry.tombstones if t.segments > number]
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)

    def stored(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` (int64) any segment's files hold, tombstoned or not: bytes a
        compaction has not purged. O(len(ids) · log N · segments)."""
        ids = np.asarray(ids, dtype=np.int64)
        found = np.zeros(len(ids), dtype=bool)
        for number in range(len(self.entry.segments)):
            found |= np.isin(ids, self.segment_ids(number), assume_unique=False)
        return found

    def live(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` (int64) the shard serves: stored in a segment and not hidden there.
        O(len(ids) · log N · segments): binary searches on the sorted id columns."""
        ids = np.asarray(ids, dtype=np.int64)
        found = np.zeros(len(ids), dtype=bool)
        for number in range(len(self.entry.segments)):
            stored = self.segment_ids(number)
            at = np.minimum(np.searchsorted(stored, ids), max(len(stored) - 1, 0))
            present = (stored[at] == ids) if len(stored) else np.zeros(len(ids), bool)
            hidden = self.hidden(number)
            if len(hidden):
                at = np.minimum(np.searchsorted(hidden, ids), len(hidden) - 1)
                present &= hidden[at] != ids
            found |= present
        return found

    def live_metadata(self) -> pa.Table:
        """Metadata rows of every live item (O(shard): for batch jobs, not queries)."""
        from indexer.store import load_metadata

        tables = []
        for number, segment in enumerate(self.entry.segments):
            meta = with_weights(load_metadata(self.root, segment))
            hidden = self.hidden(number)
            if len(hidden):
                meta = meta.filter(pa.array(~np.isin(meta.column("id").to_numpy(), hidden)))
            tables.append(meta)
        return pa.concat_tables(tables, promote_options="permissive")

    # ---- edits ---------------------------------------------------------------------------
    def add(self, version: str, index: faiss.Index, meta: pa.Table,
            vectors: np.ndarray | None) -> ShardEntry:
        """A new delta segment holding ``index`` (encoded with the version's trained index),
        its metadata rows and vectors. Cost: O(rows added · log N). Raises DuplicateIds when an
        incoming id is already live in this shard, or occurs twice among the incoming rows
        (ids are routed by id mod S, so every copy of an id meets here: no id list is ever
        gathered on a driver)."""
        from indexer.reader import DuplicateIds

        if not index.ntotal:
            return self.entry
        ids = meta.column("id").to_numpy()
        clash = ids[self.live(ids)]
        if len(clash):
            raise DuplicateIds(f"{len(clash)} ids of the new rows are already in the memory "
                               f"(shard {self.entry.shard}, e.g. {clash[:5].tolist()}): add only "
                               "new items, or delete the old ones first")
        number = len(self.entry.segments)
        segment = write_segment(self.index_root, self._stem(version, f".seg{number:03d}"),
                                index, meta, vectors)
        return ShardEntry(self.entry.shard, self.entry.count + segment.count,
                          self.entry.segments + [segment], list(self.entry.tombstones))

    def tombstone(self, version: str, ids: np.ndarray) -> ShardEntry:
        """Hide ``ids`` (int64; each must be live in this shard) from every current segment:
        one sorted id file. Cost: O(ids). Raises ValueError for an id the shard does not serve."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if not len(ids):
            return self.entry
        live = self.live(ids)
        if not live.all():
            raise ValueError(f"shard {self.entry.shard} does not serve ids {ids[~live][:5].tolist()}")
        path = f"{self._stem(version, '')}{TOMBSTONE_SUFFIX}"
        entry = TombstoneEntry(path, _write(self.index_root, path, npy_bytes(ids)), int(len(ids)),
                               len(self.entry.segments))
        return ShardEntry(self.entry.shard, self.entry.count - len(ids), list(self.entry.segments),
                          self.entry.tombstones + [entry])

    def set_weights(self, version: str, ids: np.ndarray, weights: np.ndarray) -> ShardEntry:
        """Per-item weights (soft pruning) in new metadata files; index and vector files are
        shared with the parent. Cost: O(shard metadata)."""
        from indexer.store import load_metadata

        segments = []
        for number, segment in enumerate(self.entry.segments):
            meta = set_weights(with_weights(load_metadata(self.root, segment)), ids, weights)
            stem = self._stem(version, f".seg{number:03d}")
            segments.append(SegmentEntry(
                segment.count, segment.index_path, segment.index_sha256, f"{stem}{METADATA_SUFFIX}",
                _write(self.index_root, f"{stem}{METADATA_SUFFIX}", ipc_bytes(meta)),
                segment.vectors_path, segment.vectors_sha256, segment.keys_path, segment.keys_sha256))
        return ShardEntry(self.entry.shard, self.entry.count, segments, list(self.entry.tombstones))

    def compact(self, version: str) -> ShardEntry:
        """One segment holding exactly the live items, tombstoned rows physically dropped from
        the index, the metadata and the vectors. Cost: O(shard). The vectors are gathered by
        row from the segments' memory-mapped files into the new one (no copy of the shard's
        vectors on the heap); the codes are read whole. A compacted shard is returned as is."""
        from indexer.store import load_index, load_metadata, load_vectors

        if self.entry.compacted:
            return self.entry
        index, metas, vectors, kept_rows, offset = None, [], [], [], 0
        for number, segment in enumerate(self.entry.segments):
            part = load_index(self.root, segment, mmap=False)
            meta = with_weights(load_metadata(self.root, segment))
            vectors.append(load_vectors(self.root, segment))  # memory-mapped: gathered by row
            rows = meta.num_rows  # the vectors file's rows, in the same order
            keep = np.arange(rows, dtype=np.int64)
            hidden = self.hidden(number)
            if len(hidden):
                drop = np.isin(meta.column("id").to_numpy(), hidden)
                part.remove_ids(faiss.IDSelectorBatch(hidden))
                meta = meta.filter(pa.array(~drop))
                keep = keep[~drop]
            metas.append(meta)
            kept_rows.append(offset + keep)
            offset += rows
            if index is None:
                index = part
            elif part.ntotal:
                merge_lists(index, part)
        meta = pa.concat_tables(metas, promote_options="permissive")
        sources = _vector_sources(vectors, self.entry.segments)
        segment = write_segment(self.index_root, self._stem(version, ""), index, meta, sources,
                                np.concatenate(kept_rows))
        return ShardEntry(self.entry.shard, segment.count, [segment], [])


def _vector_sources(vectors: list, segments: list) -> list | None:
    """A compaction's vector sources, one per segment: None when no segment keeps vectors; a
    segment without a vectors file that keeps no row (a shard empty at the build: its base
    has no vectors file) stands as 0 rows, so the vectors later adds wrote are kept. Raises
    ValueError for a segment with rows but no vectors while others have them."""
    present = [v for v in vectors if v is not None]
    if not present:
        return None
    sources = []
    for source, segment in zip(vectors, segments):
        if source is None and segment.count:
            raise ValueError(f"segment {segment.index_path} holds {segment.count} rows but no "
                             "vectors, while other segments of its shard keep theirs")
        sources.append(source if source is not None
                       else np.empty((0, present[0].shape[1]), present[0].dtype))
    return sources


def set_weights(meta: pa.Table, ids: np.ndarray, weights: np.ndarray) -> pa.Table:
    """Per-item weights (soft pruning) for the given ids; other rows keep theirs."""
    current = with_weights(meta).column("weight").to_numpy().astype(np.float64, copy=True)
    if len(ids):
        order = np.argsort(ids)
        sorted_ids, sorted_weights = ids[order], np.asarray(weights, dtype=np.float64)[order]
        own = meta.column("id").to_numpy()
        rows = np.minimum(np.searchsorted(sorted_ids, own), len(sorted_ids) - 1)
        hit = sorted_ids[rows] == own
        current[hit] = sorted_weights[rows[hit]]
    meta = with_weights(meta)
    return meta.set_column(meta.column_names.index("weight"), "weight", pa.array(current))


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
