"""A shard's metadata as a memory-mapped Arrow IPC file, read by row for the k answers only.

One row per stored item, sorted by id: ``id`` int64, ``label``, ``key``, ``source``,
``content_hash``, ``batch`` (strings) and ``weight`` float64 (soft pruning; 1.0 when unpruned):
``METADATA_SCHEMA``, the one schema every metadata table has inside the indexer. ``conform``
brings a table to it where tables enter (``reader.read_part``, ``with_weights``), so tables
from different batches (an API batch with all-null sources, a part whose rows were all
forgotten) always concatenate.
The file is Arrow IPC (Feather v2) without compression and with a single record batch, so
``pyarrow.memory_map`` gives every column zero-copy: opening a shard costs page-cache, not
heap, and a lookup touches O(k log N) pages (binary search on ``id``, then k row reads).
Format: https://arrow.apache.org/docs/format/Columnar.html#ipc-file-format
Legacy versions (``.meta.parquet``) are read whole into memory, with the same interface.
"""
from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from pipelines import storage

SUFFIX = ".meta.arrow"
TEXT_FIELDS = ("key", "source", "label")
WEIGHT = "weight"

# Every column nullable except in meaning: ``id`` must be present and non-null.
METADATA_SCHEMA = pa.schema([
    ("id", pa.int64()),
    ("label", pa.string()),
    ("key", pa.string()),
    ("source", pa.string()),
    ("content_hash", pa.string()),
    ("batch", pa.string()),
    (WEIGHT, pa.float64()),
])
BATCH_ONLY_COLUMNS = ("embedding", "encoder")  # boundary 1 columns that metadata does not hold


def _compatible(actual: pa.DataType, wanted: pa.DataType) -> bool:
    """A cast that changes the representation, never the meaning (wider or equivalent)."""
    if pa.types.is_null(actual):
        return True
    if pa.types.is_string(wanted):
        if pa.types.is_dictionary(actual):
            actual = actual.value_type
        return pa.types.is_string(actual) or pa.types.is_large_string(actual) or (
            hasattr(pa.types, "is_string_view") and pa.types.is_string_view(actual))
    if pa.types.is_int64(wanted):
        return pa.types.is_integer(actual)
    if pa.types.is_float64(wanted):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    return False


def conform(table: pa.Table) -> pa.Table:
    """``table`` with exactly ``METADATA_SCHEMA`` (column order, types, no schema metadata):
    null-typed columns (e.g. an empty or all-None column) cast to their type, equivalent types
    (large_string, dictionary<string>, narrower ints, float32) cast, a missing ``weight``
    added as ones and any other missing column as typed nulls; the embedding batch's own
    columns (``embedding``, ``encoder``), which metadata does not store, are dropped. Columns
    already right are kept as they are (zero-copy: a memory-mapped table stays memory-mapped).

    Raises ValueError naming the column when ``id`` is missing or has nulls, when a column has
    a conflicting type (e.g. ``label`` int64), when a cast would lose values, or when the
    table has a column the schema does not know."""
    unknown = [name for name in table.column_names if METADATA_SCHEMA.get_field_index(name) < 0
               and name not in BATCH_ONLY_COLUMNS]
    if unknown:
        raise ValueError(f"shard metadata has unknown columns {unknown}; "
                         f"expected {METADATA_SCHEMA.names}")
    if len(set(table.column_names)) != len(table.column_names):
        raise ValueError(f"shard metadata has duplicate columns: {table.column_names}")
    if "id" not in table.column_names:
        raise ValueError("shard metadata has no 'id' column")
    columns = []
    for field in METADATA_SCHEMA:
        if field.name not in table.column_names:
            columns.append(pa.array(np.ones(table.num_rows, dtype=np.float64))
                           if field.name == WEIGHT else pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if column.type != field.type:
            if not _compatible(column.type, field.type):
                raise ValueError(f"shard metadata column {field.name!r} is {column.type}, "
                                 f"expected {field.type} (batches disagree on its type?)")
            try:
                column = column.cast(field.type)  # safe: overflow or truncation raises
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                raise ValueError(f"shard metadata column {field.name!r}: cannot cast "
                                 f"{column.type} to {field.type}: {error}") from error
        columns.append(column)
    if columns[0].null_count:
        raise ValueError(f"shard metadata column 'id' has {columns[0].null_count} nulls")
    return pa.Table.from_arrays(columns, schema=METADATA_SCHEMA)


def with_weights(meta: pa.Table) -> pa.Table:
    """``meta`` conformed to ``METADATA_SCHEMA`` (``conform``): a float64 ``weight`` column
    (ones when it has none; float32 widened), every other column typed. Raises ValueError as
    ``conform`` does."""
    return conform(meta)


def ipc_bytes(meta: pa.Table) -> bytes:
    """The table as one uncompressed Arrow IPC file with one record batch (zero-copy on read)."""
    meta = meta.combine_chunks()
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, meta.schema) as writer:
        writer.write_table(meta, max_chunksize=max(meta.num_rows, 1))
    return sink.getvalue().to_pybytes()


def write_ipc(meta: pa.Table, path: str) -> None:
    """``ipc_bytes`` written straight to the local file ``path`` (no copy in memory)."""
    meta = meta.combine_chunks()
    with pa.OSFile(path, "wb") as sink, ipc.new_file(sink, meta.schema) as writer:
        writer.write_table(meta, max_chunksize=max(meta.num_rows, 1))


SORT_IN_MEMORY_BYTES = 64 << 20  # tables up to this size are sorted with one take


def write_sorted_ipc(meta: pa.Table, order: np.ndarray, path: str) -> None:
    """Rows ``order`` ((n,) int64 row numbers) of ``meta`` written to the local file ``path``
    in ``ipc_bytes``' layout (one record batch, so readers map every column zero-copy). A
    table over ``SORT_IN_MEMORY_BYTES`` is reordered one column at a time: each taken column
    goes to a scratch file beside ``path`` and is memory-mapped back, and the file is written
    from those maps, so the heap holds one column (twice, while it is taken), never a sorted
    copy of the table (a 10M-row shard's 0.8 GB of metadata: issue 13)."""
    indices = pa.array(np.asarray(order, dtype=np.int64))
    if meta.nbytes <= SORT_IN_MEMORY_BYTES:
        write_ipc(meta.take(indices), path)
        return
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path)),
                                     prefix=".sorting-") as scratch:
        columns = []
        for number, name in enumerate(meta.column_names):
            column_path = os.path.join(scratch, f"{number}.arrow")
            write_ipc(pa.table({name: meta.column(number).take(indices)}), column_path)
            columns.append(ipc.open_file(pa.memory_map(column_path, "r")).read_all().column(0))
        write_ipc(pa.Table.from_arrays(columns, schema=meta.schema), path)
        del columns  # unmapped before the scratch folder goes


def open_table(url: str) -> pa.Table:
    """The metadata table of a shard file: memory-mapped (zero-copy) when the file is Arrow
    IPC on a local disk, copied to the local cache first when remote; read into memory for
    legacy Parquet files. Raises FileNotFoundError, pyarrow.ArrowInvalid on a damaged file."""
    if url.endswith(".parquet"):
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as handle:
            return pq.read_table(io.BytesIO(handle.read()))
    local = storage.localize(url, cache="index")
    return ipc.open_file(pa.memory_map(local, "r")).read_all()


class ShardMetadata:
    """Row lookups on one shard's metadata table (sorted by id), never touching all N rows
    per call. ``ids`` is a zero-copy int64 view of the id column."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        column = table.column("id")
        self.ids = (column.chunk(0).to_numpy() if column.num_chunks == 1
                    else column.to_numpy()).astype(np.int64, copy=False)
        if len(self.ids) > 1 and not bool(np.all(self.ids[1:] > self.ids[:-1])):
            raise ValueError("shard metadata must be sorted by unique id")
        self._columns = {name: (table.column(name).chunk(0) if table.column(name).num_chunks == 1
                                else table.column(name).combine_chunks())
                         for name in table.column_names}

    def __len__(self) -> int:
        return len(self.ids)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 where the shard does not hold it (any shape; O(len(ids) log N))."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.ids) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        rows = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[rows] == ids, rows, -1)

    def take(self, rows: np.ndarray, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Each field at ``rows`` (any shape; -1 = missing): text fields as object arrays with
        None where missing, ``weight`` as float64 with NaN where missing. O(rows.size)."""
        rows = np.asarray(rows, dtype=np.int64)
        flat = rows.reshape(-1)
        hit = flat >= 0
        picked = pa.array(np.where(hit, flat, 0) if len(self.ids) else np.zeros(0, np.int64))
        out = {}
        for field in fields:
            if field == WEIGHT and WEIGHT not in self._columns:
                values = np.ones(len(flat))
            elif len(self.ids) == 0:
                values = np.full(len(flat), np.nan if field == WEIGHT else None,
                                 dtype=np.float64 if field == WEIGHT else object)
            elif field == WEIGHT:
                values = self._columns[WEIGHT].take(picked).to_numpy(zero_copy_only=False)
                values = values.astype(np.float64)
            else:
                values = np.asarray(self._columns[field].take(picked).to_pylist(), dtype=object)
            if field == WEIGHT:
                values = np.where(hit, values, np.nan)
            else:
                values = np.where(hit, values, None)
            out[field] = values.reshape(rows.shape)
        return out

    def label_counts(self) -> dict[str, int]:
        """Items per label, counted in Arrow (no per-item Python objects)."""
        if len(self.ids) == 0:
            return {}
        counts = pc.value_counts(self._columns["label"])
        return {str(v): int(c) for v, c in zip(counts.field("values").to_pylist(),
                                               counts.field("counts").to_pylist())}
