"""Read embedding batches (pipelines' boundary 1) as independent parts for parallel work."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.metadata import conform
from pipelines import storage
from pipelines.manifest import BatchManifest, list_batches, read_parquet_files
from pipelines.schema import conform_embeddings, embeddings_matrix

META_COLUMNS = ["id", "label", "key", "source", "content_hash"]


class IncompatibleBatches(ValueError):
    """Batches embedded by different encoders (or dimensions) cannot share one index."""


class DuplicateIds(ValueError):
    """The same id in two rows: the memory would answer with two copies of one image."""


PART_ROWS = 1 << 20  # a build or add splits a file holding more rows into parts of about this many


@dataclass(frozen=True)
class Part:
    """One Parquet file of one batch, or a run of its row groups (``row_groups``, ascending;
    None: the whole file): the unit of parallel reading and adding."""

    batch: str
    url: str
    rows: int  # as written; rows of forgotten ids are dropped when read
    forgotten: np.ndarray | None = field(default=None, compare=False, repr=False)
    row_groups: tuple[int, ...] | None = None


@dataclass(frozen=True)
class MemoryInputs:
    encoder: str
    dim: int
    batches: list[str]
    parts: list[Part]

    @property
    def count(self) -> int:
        return sum(part.rows for part in self.parts)


def plan_inputs(root: str, batches: list[str] | None = None, encoder: str | None = None,
                dim: int | None = None, split_rows: int | None = None) -> MemoryInputs:
    """The parts of the named batches (default: all complete ones); refuse mixed encoders.
    Ids in the forget ledger are dropped when the parts are read (indexer/forgotten.py).
    ``split_rows``: a file holding more rows is split into runs of its row groups of at least
    that many rows each (``split_part``), so one large file is several tasks."""
    from indexer.forgotten import forgotten_ids

    names = batches if batches else list_batches(root)
    forgotten = forgotten_ids(root)
    if not names:
        raise FileNotFoundError(f"no embedding batches under {root}/embeddings (run `vmem ingest`)")
    parts, seen = [], {}
    for name in names:
        manifest = BatchManifest.read(root, name)
        seen[name] = (manifest.encoder, manifest.dim)
        parts += [Part(name, url, f["rows"], forgotten if len(forgotten) else None) for url, f in
                  zip(manifest.embedding_urls(root), manifest.files) if f["rows"] > 0]
    kinds = set(seen.values()) | ({(encoder, dim)} if encoder else set())
    if len(kinds) > 1:
        detail = ", ".join(f"{batch}: {enc} (dim {d})" for batch, (enc, d) in seen.items())
        expected = f"; the index expects {encoder} (dim {dim})" if encoder else ""
        raise IncompatibleBatches(f"batches were embedded by different encoders: {detail}{expected}")
    enc, d = next(iter(seen.values()))
    if split_rows:
        parts = [piece for part in parts for piece in split_part(part, split_rows)]
    return MemoryInputs(enc, d, list(names), parts)


def split_part(part: Part, rows: int) -> list[Part]:
    """``part`` as runs of consecutive row groups of at least ``rows`` rows each (the last
    run may hold fewer; a file of one row group stays whole, as Parquet cannot be cut inside
    one), in file order: read in turn, they give the file's rows in order. Reads the file's
    footer only when ``part.rows`` exceeds ``rows``."""
    if part.rows <= rows or part.row_groups is not None:
        return [part]
    fs, path = storage.filesystem(part.url)
    with fs.open(path, "rb") as handle:
        metadata = pq.ParquetFile(handle).metadata
    sizes = [metadata.row_group(number).num_rows for number in range(metadata.num_row_groups)]
    runs: list[list[int]] = [[]]
    held = 0
    for number, size in enumerate(sizes):
        if held >= rows:
            runs.append([])
            held = 0
        runs[-1].append(number)
        held += size
    if len(runs) == 1:
        return [part]
    return [Part(part.batch, part.url, sum(sizes[n] for n in run), part.forgotten, tuple(run))
            for run in runs]


def read_part(part: Part, with_vectors: bool = True) -> tuple[pa.Table, np.ndarray | None]:
    """The part's metadata (with its batch name) conformed to ``metadata.METADATA_SCHEMA``
    (typed even when a column is all null or every row was forgotten, so parts of any batch
    concatenate) and, optionally, its (n, dim) vectors. Raises ValueError naming a column of
    a conflicting type."""
    columns = META_COLUMNS + (["embedding"] if with_vectors else [])
    if part.row_groups is not None:  # a run of the file's row groups (split_part)
        fs, path = storage.filesystem(part.url)
        with fs.open(path, "rb") as handle:
            table = pq.ParquetFile(handle).read_row_groups(list(part.row_groups), columns=columns)
        return _part_rows(part, conform_embeddings(table), with_vectors)
    return _part_rows(part, read_parquet_files([part.url], columns), with_vectors)


def _part_rows(part: Part, table: pa.Table, with_vectors: bool) -> tuple[pa.Table, np.ndarray | None]:
    if part.forgotten is not None:
        table = table.filter(pa.array(~np.isin(table.column("id").to_numpy(), part.forgotten)))
    vectors = embeddings_matrix(table) if with_vectors else None
    meta = table.select(META_COLUMNS).append_column(
        "batch", pa.array([part.batch] * table.num_rows, type=pa.string()))
    return conform(meta), vectors


STREAM_BUFFER = 1 << 20  # bytes: column chunks are read through a buffer this size


def _tables(part: Part, chunk_rows: int, columns: list[str]) -> Iterator[pa.Table]:
    """The part's rows (its row groups' when it names them), ``chunk_rows`` at a time. Column chunks are streamed through a 1 MiB
    buffer (pyarrow ``buffer_size``, no ``pre_buffer``) rather than read whole: otherwise one
    row group (250,000 rows of 384 floats: 384 MB) is held however small the chunk (measured:
    1,585 vs 730 MiB peak for 47,662-row chunks of such a file)."""
    fs, path = storage.filesystem(part.url)
    with fs.open(path, "rb") as handle:
        reader = pq.ParquetFile(handle, pre_buffer=False, buffer_size=STREAM_BUFFER)
        row_groups = None if part.row_groups is None else list(part.row_groups)
        for batch in reader.iter_batches(batch_size=max(1, chunk_rows), columns=columns,
                                         row_groups=row_groups):
            yield conform_embeddings(pa.Table.from_batches([batch]))


def iter_part(part: Part, chunk_rows: int,
              with_vectors: bool = True) -> Iterator[tuple[pa.Table, np.ndarray | None]]:
    """``read_part`` in chunks of at most ``chunk_rows`` rows, in file order (pyarrow
    ``ParquetFile.iter_batches``): a task holds one chunk, whatever the part's size. Yields
    (metadata, (n, dim) float32 vectors or None); the chunks concatenate to ``read_part``."""
    columns = META_COLUMNS + (["embedding"] if with_vectors else [])
    for table in _tables(part, chunk_rows, columns):
        yield _part_rows(part, table, with_vectors)


def iter_vectors(part: Part, chunk_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The part's (ids (n,) int64, vectors (n, dim) float32) in chunks of at most
    ``chunk_rows`` rows, file order, forgotten ids dropped: ``iter_part`` without the metadata
    (only the id and embedding columns are read and decoded); the same chunks."""
    for table in _tables(part, chunk_rows, ["id", "embedding"]):
        if part.forgotten is not None:
            table = table.filter(pa.array(~np.isin(table.column("id").to_numpy(), part.forgotten)))
        yield table.column("id").to_numpy(), embeddings_matrix(table)


def part_ids(part: Part, chunk_rows: int = 1 << 20) -> np.ndarray:
    """The part's ids (int64, file order), forgotten ones dropped; only the id column is read."""
    chunks = [table.column("id").to_numpy() for table in _tables(part, chunk_rows, ["id"])]
    ids = np.concatenate(chunks) if chunks else np.empty(0, np.int64)
    return ids[~np.isin(ids, part.forgotten)] if part.forgotten is not None else ids


def check_unique_ids(ids: np.ndarray, what: str = "the input batches") -> None:
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dupes = unique[counts > 1]
        raise DuplicateIds(f"{len(dupes)} ids occur more than once in {what} "
                           f"(e.g. {dupes[:5].tolist()}): the same key ingested in two batches?")
