"""Readers of embeddings users already have (``vmem import``): clip-retrieval's inference output
and autofaiss / embedding-reader inputs, streamed in row chunks on any fsspec URL.

Layouts:

- clip-retrieval: ``img_emb/img_emb_N.npy`` (float16/float32, (rows, dim)) beside
  ``metadata/metadata_N.parquet`` (row-aligned: row i of one describes row i of the other;
  ``image_path`` or ``url``, ``caption``, maybe more). ``text_emb/text_emb_N.npy`` pairs with the
  same metadata. Giving the folder that holds ``img_emb/`` finds both.
- autofaiss ``.npy``: a folder of ``.npy`` files, with optional metadata Parquet files paired by
  name (the trailing number of the stem, else the stem: ``img_emb_3`` <-> ``metadata_3``,
  ``part-a`` <-> ``part-a``).
- autofaiss Parquet: ``.parquet`` files with an embedding list column (fixed or variable
  length); the same file's other columns are the metadata.

Nothing is read whole: a ``.npy`` file is read sequentially after its header (local or remote),
Parquet in row batches of the columns asked for. Each chunk is a few tens of MB whatever the
input size.
"""
from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.sources.urls import expand_urls

EMBEDDING_SUFFIXES = (".npy", ".parquet")
CLIP_RETRIEVAL_FOLDERS = ("img_emb", "metadata")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class EmbeddingPart:
    """One embeddings file and its row-aligned metadata Parquet file (or None)."""

    embeddings: str  # URL of a .npy or .parquet file
    metadata: str | None = None

    @property
    def stem(self) -> str:
        return posixpath.splitext(posixpath.basename(self.embeddings))[0]


@dataclass
class Chunk:
    """``vectors`` (n, dim) float32 rows ``start``..``start + n`` of a part (a copy: may be
    modified), ``lengths`` (n,) int64 each row's stored length (a row whose length is not
    ``dim`` is all zeros in ``vectors``), and ``metadata`` (n rows of the columns asked for
    that the part has; None when it has none)."""

    start: int
    vectors: np.ndarray
    lengths: np.ndarray
    metadata: pa.Table | None


def pair_key(url: str) -> str:
    """The name an embeddings file and its metadata file share: the stem's trailing number
    (``img_emb_007`` -> ``7``), else the whole stem."""
    stem = posixpath.splitext(posixpath.basename(url.rstrip("/")))[0]
    match = _TRAILING_NUMBER.search(stem)
    return str(int(match.group(1))) if match else stem


def _sort_key(url: str) -> tuple:
    key = pair_key(url)
    return (0, int(key), url) if key.isdigit() else (1, key, url)


def plan_parts(embeddings: str, metadata: str | None = None) -> list[EmbeddingPart]:
    """The parts of an input: ``embeddings`` (a file, folder or pattern of ``.npy`` /
    ``.parquet`` files; a folder holding clip-retrieval's ``img_emb/`` stands for it and its
    ``metadata/``) paired with ``metadata`` files by ``pair_key``. Sorted by that key.

    Raises FileNotFoundError when nothing matches; ValueError when an embeddings file has no
    metadata file (or two), a metadata file has no embeddings file, or files of both
    suffixes are mixed."""
    fs, path = fsspec.core.url_to_fs(embeddings)
    if fs.isdir(path) and fs.isdir(posixpath.join(path, CLIP_RETRIEVAL_FOLDERS[0])):
        base = embeddings.rstrip("/")
        embeddings = f"{base}/{CLIP_RETRIEVAL_FOLDERS[0]}"
        if metadata is None and fs.isdir(posixpath.join(path, CLIP_RETRIEVAL_FOLDERS[1])):
            metadata = f"{base}/{CLIP_RETRIEVAL_FOLDERS[1]}"
    files = sorted((u for u in expand_urls(embeddings) if u.endswith(EMBEDDING_SUFFIXES)),
                   key=_sort_key)
    if not files:
        raise FileNotFoundError(f"no .npy or .parquet embedding files under {embeddings!r}")
    if len({posixpath.splitext(u)[1] for u in files}) > 1:
        raise ValueError(f"{embeddings!r} mixes .npy and .parquet files; import them separately")
    if metadata is None:
        return [EmbeddingPart(u) for u in files]
    meta = [u for u in expand_urls(metadata) if u.endswith(".parquet")]
    if not meta:
        raise FileNotFoundError(f"no .parquet metadata files under {metadata!r}")
    by_key: dict[str, list[str]] = {}
    for url in meta:
        by_key.setdefault(pair_key(url), []).append(url)
    parts = []
    for url in files:
        matches = by_key.pop(pair_key(url), [])
        if len(matches) != 1:
            raise ValueError(f"embeddings file {url} needs exactly one metadata file named like "
                             f"it (pair key {pair_key(url)!r}); found {matches or 'none'}")
        parts.append(EmbeddingPart(url, matches[0]))
    if by_key:
        raise ValueError(f"metadata files without an embeddings file: "
                         f"{sorted(u for us in by_key.values() for u in us)}")
    return parts


# --- .npy ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int  # bytes before the data


def npy_header(url: str) -> NpyHeader:
    """The header of a ``.npy`` file on any fsspec URL (reads a few hundred bytes). Raises
    ValueError for a file that is not a ``.npy`` array."""
    with fsspec.open(url, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(handle)
        return NpyHeader(tuple(shape), np.dtype(dtype), bool(fortran), handle.tell())


def npy_rows(url: str, chunk_rows: int) -> Iterator[np.ndarray]:
    """Row blocks (at most ``chunk_rows`` rows, the file's dtype) of a 2-d ``.npy`` file on any
    fsspec URL, read sequentially after the header: memory holds one block. (Not
    ``np.load(mmap_mode="r")``: every page of a mapping read through stays resident, and
    counted in the process's RSS, until it is unmapped, so a 1.5 GB part would look like 1.5 GB
    held.) Raises ValueError for a file that is not a 2-d C-order float array, or truncated."""
    header = npy_header(url)
    if len(header.shape) != 2 or header.dtype.kind != "f":
        raise ValueError(f"{url}: expected a 2-d float array (rows, dim), got shape "
                         f"{header.shape} dtype {header.dtype}")
    rows, dim = header.shape
    fs, path = fsspec.core.url_to_fs(url)
    if header.fortran_order:
        raise ValueError(f"{url}: a Fortran-order .npy cannot be streamed; rewrite it C-order")
    row_bytes = dim * header.dtype.itemsize
    with fs.open(path, "rb") as handle:
        handle.seek(header.offset)
        for start in range(0, rows, chunk_rows):
            count = min(chunk_rows, rows - start)
            data = handle.read(count * row_bytes)
            if len(data) != count * row_bytes:
                raise ValueError(f"{url}: truncated: expected {rows} rows of {row_bytes} bytes")
            yield np.frombuffer(data, dtype=header.dtype).reshape(count, dim)


# --- reading a part in chunks ----------------------------------------------------------------

def part_dim(part: EmbeddingPart, embedding_column: str) -> int:
    """The embedding length of a part: a ``.npy`` file's second axis; a Parquet file's fixed
    list size, else the length of its first row. Raises ValueError/KeyError for a file
    without such a column or rows."""
    if part.embeddings.endswith(".npy"):
        header = npy_header(part.embeddings)
        if len(header.shape) != 2:
            raise ValueError(f"{part.embeddings}: expected (rows, dim), got shape {header.shape}")
        return int(header.shape[1])
    with fsspec.open(part.embeddings, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        kind = parquet.schema_arrow.field(embedding_column).type
        if pa.types.is_fixed_size_list(kind):
            return int(kind.list_size)
        for batch in parquet.iter_batches(batch_size=1, columns=[embedding_column]):
            if batch.num_rows:
                return len(batch.column(0)[0].values)
    raise ValueError(f"{part.embeddings}: no rows to take the embedding length from")


def part_rows(part: EmbeddingPart) -> int:
    if part.embeddings.endswith(".npy"):
        return int(npy_header(part.embeddings).shape[0])
    with fsspec.open(part.embeddings, "rb") as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def read_chunks(part: EmbeddingPart, dim: int, columns: list[str], chunk_rows: int = 65536,
                embedding_column: str = "embedding") -> Iterator[Chunk]:
    """The part's rows in chunks of at most ``chunk_rows``: vectors as float32 (n, dim), each
    row's stored length, and the metadata ``columns`` the part has (from its metadata file, or
    from the embeddings Parquet file itself). Raises ValueError when the metadata file's row
    count differs from the embeddings' (not row-aligned)."""
    if part.embeddings.endswith(".npy"):
        yield from _npy_chunks(part, dim, columns, chunk_rows)
        return
    with fsspec.open(part.embeddings, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        names = parquet.schema_arrow.names
        if embedding_column not in names:
            raise KeyError(f"{part.embeddings}: no embedding column {embedding_column!r} "
                           f"(columns: {names}); name it with --embedding-column")
        own = [c for c in columns if c in names and c != embedding_column]
        metadata = _metadata_batches(part, columns, chunk_rows, parquet.metadata.num_rows)
        start = 0
        for batch in parquet.iter_batches(batch_size=chunk_rows, columns=[embedding_column, *own]):
            vectors, lengths = list_vectors(batch.column(0), dim, part.embeddings)
            table = pa.Table.from_batches([batch]).drop_columns([embedding_column])
            if metadata is not None:
                extra = _take(metadata, batch.num_rows)
                for name in extra.column_names:
                    if name not in table.column_names:
                        table = table.append_column(name, extra.column(name))
            yield Chunk(start, vectors, lengths, table if table.num_columns else None)
            start += batch.num_rows


def list_vectors(column: pa.Array, dim: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A list / fixed-size-list column of n rows -> ((n, dim) float32, (n,) lengths); rows of
    another length (or null) are zeros with their length (0 for null). Raises ValueError for
    a column that is not a list of numbers."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
            or pa.types.is_fixed_size_list(column.type)):
        raise ValueError(f"{where}: embedding column has type {column.type}, expected a list")
    if pa.types.is_fixed_size_list(column.type):
        lengths = np.where(column.is_null().to_numpy(zero_copy_only=False), 0,
                           column.type.list_size).astype(np.int64)
    else:
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)
    vectors = np.zeros((len(column), dim), dtype=np.float32)
    good = np.flatnonzero(lengths == dim)
    if len(good):
        rows = column.take(pa.array(good))
        values = pc.list_flatten(rows).cast(pa.float32()).to_numpy(zero_copy_only=False)
        vectors[good] = values.reshape(len(good), dim)
    return vectors, lengths


def _npy_chunks(part: EmbeddingPart, dim: int, columns: list[str], chunk_rows: int) -> Iterator[Chunk]:
    header = npy_header(part.embeddings)
    rows = int(header.shape[0]) if header.shape else 0
    metadata = _metadata_batches(part, columns, chunk_rows, rows)
    stored = int(header.shape[1]) if len(header.shape) == 2 else 0
    start = 0
    if stored != dim:  # the whole file has the wrong length: rows are reported, never read
        for start in range(0, rows, chunk_rows):
            count = min(chunk_rows, rows - start)
            yield Chunk(start, np.zeros((count, dim), np.float32), np.full(count, stored, np.int64),
                        _take(metadata, count) if metadata is not None else None)
        return
    for block in npy_rows(part.embeddings, chunk_rows):
        count = len(block)
        yield Chunk(start, np.array(block, dtype=np.float32), np.full(count, dim, np.int64),
                    _take(metadata, count) if metadata is not None else None)
        start += count


class _Batches:
    """Metadata record batches consumed by row count (batches and chunks need not align)."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self.batches, self.pending = batches, []
        self.buffered = 0


def metadata_rows(url: str) -> tuple[int, list[str]]:
    """A metadata Parquet file's row count and column names (its footer only)."""
    with fsspec.open(url, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        return parquet.metadata.num_rows, parquet.schema_arrow.names


def _stream(url: str, columns: list[str], chunk_rows: int) -> Iterator[pa.RecordBatch]:
    with fsspec.open(url, "rb") as handle:
        yield from pq.ParquetFile(handle).iter_batches(batch_size=chunk_rows, columns=columns)


def _metadata_batches(part: EmbeddingPart, columns: list[str], chunk_rows: int,
                      rows: int) -> _Batches | None:
    """The part's metadata file as a row-count consumer of the ``columns`` it has (None when
    it has no file or none of them). Raises ValueError when it is not row-aligned."""
    if part.metadata is None:
        return None
    count, names = metadata_rows(part.metadata)
    if count != rows:
        raise ValueError(f"metadata {part.metadata} has {count} rows but embeddings "
                         f"{part.embeddings} has {rows}: the files are not row-aligned")
    present = [c for c in columns if c in names]
    return _Batches(_stream(part.metadata, present, chunk_rows)) if present else None


def _take(source: _Batches, count: int) -> pa.Table:
    """The next ``count`` metadata rows as a table."""
    while source.buffered < count:
        batch = next(source.batches)
        source.pending.append(batch)
        source.buffered += batch.num_rows
    table = pa.Table.from_batches(source.pending)
    head, rest = table.slice(0, count), table.slice(count)
    source.pending = rest.to_batches()
    source.buffered = rest.num_rows
    return head
