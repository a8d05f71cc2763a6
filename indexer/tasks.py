"""The indexer's units of work: numpy/Arrow in, numpy/Arrow/files out; no Ray imports here."""
from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from typing import Sequence

import faiss
import numpy as np
import pyarrow as pa

from indexer.factory import ASSIGN_EF_SEARCH, set_quantizer_beam
from indexer.faults import crash_point
from indexer.manifest import ShardEntry
from indexer.metadata import SUFFIX as METADATA_SUFFIX
from indexer.metadata import conform, with_weights
from indexer.quantizer import Trained, add_codes, copy_lists, encode, lists_copyable, merge_lists, serialize_stripped, write_stripped
from indexer.reader import Part, iter_part, iter_vectors
from indexer.segments import Shard, stored_ids, write_segment_index, write_segment_rows  # noqa: F401 (stored_ids: re-export)
from pipelines import storage

VECTOR_DTYPES = {"none": None, "fp16": np.float16, "fp32": np.float32}
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 256, 1 << 18
TASK_MEMORY_MB = 256  # default working set of one build task (BuildConfig, `vmem index add`)


def chunk_rows_for(dim: int, task_memory_bytes: int) -> int:
    """Rows a task reads at once so that its working set stays within ``task_memory_bytes``:
    per row ~36·dim + 512 bytes in flight (the Arrow batch, the float32 matrix, the per-shard
    copy, FAISS's residuals and assignment, the metadata), on top of ~230 MB that does not
    grow with the chunk (the interpreter and libraries, the part's codes). Measured on one
    add_part of 250,000 x 384 (IVF4096,PQ64x8 inner product, one thread, 2026-11-30): peak
    RSS 373, 454 and 881 MiB at 8,192, 16,384 and 47,662 rows. Clamped to [256, 262144]."""
    return int(np.clip(task_memory_bytes // (36 * dim + 512), MIN_CHUNK_ROWS, MAX_CHUNK_ROWS))


@dataclass
class ShardPiece:
    """What one part contributes to one shard: a small index of the same trained kind, its
    rows' metadata and (for exact re-ranking) their vectors, all in the same row order."""

    index: np.ndarray  # the index serialised without its coarse quantizer (serialize_stripped)
    meta: pa.Table
    vectors: np.ndarray | None


def shard_of(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """Stable assignment: ids are hashes, so id mod S balances and never moves an item."""
    return (ids % num_shards).astype(np.int64)


@dataclass(frozen=True)
class PartSample:
    """What the sampling pass draws from one part: training rows (``train_rows`` x dim float32,
    in the .npy file ``train_file`` when the pass writes to storage, else in ``train``) and
    held-out tuning queries (``query_ids`` (q,) int64, ``query_vectors`` (q, dim) float32)."""

    train_rows: int
    train_file: str | None
    train: np.ndarray | None
    query_ids: np.ndarray
    query_vectors: np.ndarray

    def load_train(self) -> np.ndarray:
        """The training rows, read from ``train_file`` (numpy format, no pickle) when there."""
        if self.train_file is None:
            return self.train
        fs, path = storage.filesystem(self.train_file)
        with fs.open(path, "rb") as handle:
            return np.load(handle, allow_pickle=False)


def sample_part(part: Part, part_number: int, dim: int, train_probability: float,
                query_probability: float, seed: int, chunk_rows: int = 1 << 16,
                train_file: str | None = None) -> PartSample:
    """One read of a part, in chunks, drawing two seeded Bernoulli samples from independent
    streams: training rows (seed sequence [seed, part]) and tuning queries ([seed, part, 1]).
    Deterministic per part (one stream drawn chunk after chunk equals one draw over the whole
    part). With ``train_file`` (a URL under the build's scratch) the training rows go to
    storage, written atomically, and not through the object store: a Ray worker that returned
    them would keep their shared-memory pages resident while the driver trains."""
    train_rng = np.random.default_rng([seed, part_number])
    query_rng = np.random.default_rng([seed, part_number, 1])
    kept, query_ids, query_vectors = [], [], []
    for ids, vectors in iter_vectors(part, chunk_rows):
        if train_probability > 0:
            kept.append(vectors[train_rng.random(len(vectors)) < train_probability])
        picked = query_rng.random(len(vectors)) < query_probability
        query_ids.append(ids[picked])
        query_vectors.append(vectors[picked])
    train = np.concatenate(kept) if kept else np.empty((0, dim), np.float32)
    ids = np.concatenate(query_ids) if query_ids else np.empty(0, np.int64)
    queries = np.concatenate(query_vectors) if query_vectors else np.empty((0, dim), np.float32)
    if train_file is None:
        return PartSample(len(train), None, train, ids, queries)

    def write(local: str) -> None:
        with open(local, "wb") as handle:
            np.save(handle, train, allow_pickle=False)

    storage.write_file_atomic(train_file, write)
    return PartSample(len(train), train_file, None, ids, queries)


@dataclass(frozen=True)
class AddedPart:
    """What ``add_part`` returns: one ``PieceFiles`` per shard and, when it was given tuning
    queries, their exact top-k within the part (((q, k) float32 scores, (q, k) int64 ids))."""

    pieces: list
    exact: tuple[np.ndarray, np.ndarray] | None


@dataclass(frozen=True)
class PieceFiles:
    """What one part contributes to one shard, on storage (a build's or an add's temporary
    files, under ``ROOT/index/<version>/.build/``): ``<stem>.faiss`` (the rows encoded on the
    trained index, written without its coarse quantizer), ``<stem>.meta.arrow`` (their
    metadata, file order) and, when the memory re-ranks, ``<stem>.vectors.bin`` (raw
    ``dtype`` rows, count x dim). ``count`` 0: no files."""

    stem: str
    count: int
    dim: int
    dtype: str | None  # numpy dtype name of the vectors file; None: no vectors


def add_part(index_root: str, version: str, part: Part, number: int, trained: np.ndarray,
             num_shards: int, keep_vectors: str, chunk_rows: int,
             queries: np.ndarray | None = None, exact_k: int = 0, threads: int = 1) -> AddedPart:
    """Encode one part onto the trained index, split by shard (id mod S), streaming: the part
    is read ``chunk_rows`` at a time (reader.iter_part); each chunk is encoded once
    (quantizer.encode: one coarse assignment per row at the chunk's batch size, whatever S)
    and its rows' codes filed into one in-memory index per shard (sharing the coarse
    quantizer), its metadata and vectors straight to the shard's piece files. Memory: one chunk plus the
    part's codes. Files are written atomically under deterministic names, so a retried task
    (Ray re-runs a lost one) writes the same pieces. With tuning ``queries`` ((q, dim)
    float32), each chunk read also feeds their exact top-``exact_k`` (tuning.ExactTopK), so
    tuning reads the input no more. FAISS runs ``threads`` OpenMP threads meanwhile (the
    caller reserves as many CPUs: indexer/openmp.py says why one task per node)."""
    from indexer.openmp import omp_threads

    with omp_threads(threads):
        return _add_part(index_root, version, part, number, trained, num_shards, keep_vectors,
                         chunk_rows, queries, exact_k)


def _add_part(index_root: str, version: str, part: Part, number: int, trained: np.ndarray,
              num_shards: int, keep_vectors: str, chunk_rows: int, queries: np.ndarray | None,
              exact_k: int) -> AddedPart:
    import pyarrow.ipc as ipc

    from indexer.tuning import ExactTopK

    shared = Trained.from_bytes(trained)  # this task's own copy: its beam may be set
    set_quantizer_beam(shared.index, ASSIGN_EF_SEARCH)  # top-1 assignment needs a narrower one
    indexes = [shared.empty() for _ in range(num_shards)]
    dtype = VECTOR_DTYPES[keep_vectors]
    stems = [f"{version}/.build/part-{number:05d}.shard-{s:05d}" for s in range(num_shards)]
    counts = [0] * num_shards
    exact = ExactTopK(queries, exact_k) if queries is not None and exact_k > 0 else None
    with contextlib.ExitStack() as files:
        writers: dict[int, tuple] = {}

        def open_piece(shard: int, schema: pa.Schema) -> tuple:
            stem = storage.join(index_root, stems[shard])
            meta_path = files.enter_context(storage.staged(f"{stem}{METADATA_SUFFIX}"))
            vector_file = None
            if dtype is not None:
                vector_file = files.enter_context(open(files.enter_context(
                    storage.staged(f"{stem}.vectors.bin")), "wb"))
            sink = files.enter_context(pa.OSFile(meta_path, "wb"))
            return files.enter_context(ipc.new_file(sink, schema)), vector_file

        for meta, vectors in iter_part(part, chunk_rows):
            ids = meta.column("id").to_numpy()
            if exact is not None:
                exact.update(vectors, ids)
            codes = encode(shared.index, vectors)  # once per chunk, whatever the shard count
            for shard, rows in _split(ids, num_shards):
                if shard not in writers:
                    writers[shard] = open_piece(shard, meta.schema)
                writer, vector_file = writers[shard]
                mine = ids if rows is None else ids[rows]
                if codes is None:
                    indexes[shard].add_with_ids(vectors if rows is None else np.ascontiguousarray(vectors[rows]), mine)
                else:
                    add_codes(indexes[shard], codes if rows is None else codes[rows], mine)
                writer.write_table(meta if rows is None else meta.take(pa.array(rows)))
                if vector_file is not None:
                    vector_file.write(np.ascontiguousarray(vectors if rows is None else vectors[rows],
                                                           dtype=dtype).tobytes())
                counts[shard] += len(mine)
            crash_point("add_part")
        for shard, index in enumerate(indexes):
            if counts[shard]:
                storage.write_file_atomic(storage.join(index_root, f"{stems[shard]}.faiss"),
                                          lambda path, index=index: write_stripped(index, path))
    dim = int(shared.index.d)
    name = None if dtype is None else np.dtype(dtype).name
    return AddedPart([PieceFiles(stems[s], counts[s], dim, name) for s in range(num_shards)],
                     None if exact is None else exact.result)


def _split(ids: np.ndarray, num_shards: int):
    """(shard, rows of ``ids`` in it) for each shard holding any: rows None when it holds
    them all (one shard: no copy of the chunk)."""
    if num_shards == 1:
        yield 0, None
        return
    shards = shard_of(ids, num_shards)
    for shard in range(num_shards):
        rows = np.flatnonzero(shards == shard)
        if len(rows):
            yield shard, rows


def split_into_pieces(trained: Trained, meta: pa.Table, vectors: np.ndarray, num_shards: int,
                      keep_vectors: str) -> list[ShardPiece]:
    """Rows already in memory (the online add: ``meta`` rows, (n, d) float32 ``vectors``)
    encoded on the trained index, one piece per shard; the pieces share ``trained``'s coarse
    quantizer and hold none themselves."""
    ids = meta.column("id").to_numpy()
    shards = shard_of(ids, num_shards)
    dtype = VECTOR_DTYPES[keep_vectors]
    codes = encode(trained.index, vectors) if len(ids) else None
    pieces = []
    for shard in range(num_shards):
        rows = np.flatnonzero(shards == shard)
        index = trained.empty()
        if len(rows) and codes is None:
            index.add_with_ids(np.ascontiguousarray(vectors[rows]), ids[rows])
        elif len(rows):
            add_codes(index, codes[rows], ids[rows])
        pieces.append(ShardPiece(np.frombuffer(serialize_stripped(index), dtype=np.uint8),
                                 meta.take(pa.array(rows)),
                                 vectors[rows].astype(dtype) if dtype is not None else None))
    return pieces


@contextlib.contextmanager
def build_scratch(root: str, version: str):
    """The span of a job writing the files of ``version`` (not yet published): its piece
    files (``<version>/.build/``) are removed when it ends, and when it fails the whole
    version folder is, so a failed build or add leaves nothing behind. A killed job's
    folder is removed by ``vmem index gc`` (an orphan version folder)."""
    from indexer.layout import index_root

    folder = storage.join(index_root(root), version)
    try:
        yield
    except BaseException:
        storage.remove(folder)
        raise
    storage.remove(storage.join(folder, ".build"))


@contextlib.contextmanager
def opened_rows(index_root: str, pieces: Sequence[PieceFiles]):
    """The rows of one shard's pieces as (metadata, vector sources), in piece order: memory-
    mapped from the piece files (remote files copied to a scratch folder first), so only the
    pages read are resident; vector sources None when the pieces hold no vectors."""
    import pyarrow.ipc as ipc

    metas, sources = [], []
    with tempfile.TemporaryDirectory(prefix="vmem-merge-") as scratch:
        for piece in pieces:
            if not piece.count:
                continue
            stem = storage.join(index_root, piece.stem)
            local = storage.local_copy(f"{stem}{METADATA_SUFFIX}", scratch)
            metas.append(ipc.open_file(pa.memory_map(local, "r")).read_all())
            if piece.dtype is not None:
                sources.append(np.memmap(storage.local_copy(f"{stem}.vectors.bin", scratch),
                                         dtype=piece.dtype, mode="r", shape=(piece.count, piece.dim)))
        meta = (pa.concat_tables(metas, promote_options="permissive") if metas
                else conform(pa.table({"id": pa.array([], pa.int64())})))
        yield meta, sources or None


def merged_codes(index_root: str, trained_stripped: bytes, pieces: Sequence[PieceFiles]) -> faiss.Index:
    """The codes of one shard's pieces merged into one index, in piece order. The heap holds
    one shard's codes: each piece file is memory-mapped read-only and its lists copied
    (quantizer.copy_lists), so a piece's codes are page cache, unmapped once copied, never a
    second copy on the heap (the exact kind reads each piece whole and moves its rows:
    merge_lists). Remote piece files are copied one at a time. The index has no coarse
    quantizer: it is for writing, not searching."""
    index = faiss.deserialize_index(np.frombuffer(trained_stripped, dtype=np.uint8))
    mapped = getattr(faiss, "IO_FLAG_MMAP_IFC", None)  # faiss >= 1.10: zero-copy array lists
    if not lists_copyable(index):
        mapped = None
    for piece in pieces:
        if piece.count:
            with tempfile.TemporaryDirectory(prefix="vmem-merge-") as scratch:
                local = storage.local_copy(storage.join(index_root, f"{piece.stem}.faiss"), scratch)
                if mapped is None:
                    merge_lists(index, faiss.read_index(local))
                else:
                    copy_lists(index, faiss.read_index(local, mapped | faiss.IO_FLAG_READ_ONLY))
    return index


@contextlib.contextmanager
def opened_pieces(index_root: str, trained_stripped: bytes, pieces: Sequence[PieceFiles]):
    """The pieces of one shard as (index, metadata, vector sources): ``merged_codes`` and
    ``opened_rows`` together (for a delta segment, which is small)."""
    with opened_rows(index_root, pieces) as (meta, sources):
        yield merged_codes(index_root, trained_stripped, pieces), meta, sources


def merge_shard(index_root: str, version: str, shard: int, trained_stripped: bytes,
                *pieces: PieceFiles) -> ShardEntry:
    """Merge the parts' piece files of one shard, in part order (deterministic), and write
    the shard's compacted base segment; the piece files are removed once it is written. The
    rows are written first (metadata sorted by id one column at a time, vectors gathered in
    chunks from the memory-mapped pieces), then the codes are merged and written: memory is
    one shard's codes, or its ids and one metadata column, never both. Raises DuplicateIds
    when an id occurs twice in the shard (ids are split by id mod S, so every duplicate
    meets itself in one shard)."""
    stem = f"{version}/shard-{shard:05d}"
    with opened_rows(index_root, pieces) as (meta, sources):
        segment = write_segment_rows(index_root, stem, meta, sources)
    del meta, sources  # unmapped before the codes are read
    segment = write_segment_index(index_root, stem, merged_codes(index_root, trained_stripped, pieces),
                                  segment)
    remove_pieces(index_root, pieces)
    return ShardEntry(shard, segment.count, [segment])


def remove_pieces(index_root: str, pieces: Sequence[PieceFiles]) -> None:
    for piece in pieces:
        for suffix in (".faiss", METADATA_SUFFIX, ".vectors.bin"):
            storage.remove(storage.join(index_root, f"{piece.stem}{suffix}"))


def merge_pieces(pieces: list[ShardPiece]) -> tuple[faiss.Index, pa.Table, np.ndarray | None]:
    """The pieces of one shard as one index, metadata and vectors, in piece order."""
    index = faiss.deserialize_index(pieces[0].index)
    for piece in pieces[1:]:
        merge_lists(index, faiss.deserialize_index(piece.index))
    meta = pa.concat_tables([with_weights(piece.meta) for piece in pieces], promote_options="permissive")
    vectors = (np.concatenate([piece.vectors for piece in pieces])
               if pieces[0].vectors is not None else None)
    return index, meta, vectors


def add_segment(root: str, version: str, entry: ShardEntry, trained_stripped: bytes,
                *pieces: PieceFiles) -> ShardEntry:
    """One delta segment of ``entry``'s shard holding the pieces (an add job): O(rows added).
    The piece files are removed once it is written."""
    from indexer.layout import index_root

    with opened_pieces(index_root(root), trained_stripped, pieces) as (index, meta, sources):
        new = Shard(root, entry).add(version, index, meta, sources)
    remove_pieces(index_root(root), pieces)
    return new


def add_rows_segment(root: str, version: str, entry: ShardEntry, *pieces: ShardPiece) -> ShardEntry:
    """One delta segment of ``entry``'s shard holding in-memory pieces (the online add)."""
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
