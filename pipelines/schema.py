"""Boundary 1 on storage: the Arrow schemas of embedding shards and rejected rows.

The indexer reads these files; nothing else about the pipeline leaks downstream.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from pipelines.records import Rejected, Skipped

REJECTED_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)


# How every boundary-1 Parquet file is written, by Beam (``WriteToParquetBatched``, ingest) and
# by ``pq.write_table`` (``manifest.write_embedding_batch``: online adds, derived memories)
# alike: lists keep Arrow's child name ("item"), so a file reads back as exactly
# ``embedding_schema(dim)`` whichever writer made it. (pyarrow's write_table default, the
# "compliant" naming, reads back as ``fixed_size_list<element: float>``: another Arrow type,
# and tables of the two kinds do not concatenate.)
USE_COMPLIANT_NESTED_TYPE = False


def embedding_schema(dim: int) -> pa.Schema:
    """One row per remembered image; the embedding is L2-normalised float32 of fixed length."""
    return pa.schema(
        [
            ("id", pa.int64()),
            ("key", pa.string()),
            ("label", pa.string()),
            ("source", pa.string()),
            ("content_hash", pa.string()),
            ("embedding", pa.list_(pa.float32(), dim)),
            ("encoder", pa.string()),
        ]
    )


def embedding_batch(
    ids: Sequence[int],
    keys: Sequence[str],
    labels: Sequence[str],
    sources: Sequence[str],
    hashes: Sequence[str],
    embeddings: np.ndarray,
    encoder: str,
) -> pa.RecordBatch:
    """Columns to a RecordBatch of `embedding_schema(dim)`; numpy in, Arrow out, no copies per row."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = embeddings.shape
    flat = pa.array(embeddings.reshape(-1), type=pa.float32())
    return pa.RecordBatch.from_arrays(
        [
            pa.array(ids, type=pa.int64()),
            pa.array(keys, type=pa.string()),
            pa.array(labels, type=pa.string()),
            pa.array(sources, type=pa.string()),
            pa.array(hashes, type=pa.string()),
            pa.FixedSizeListArray.from_arrays(flat, dim),
            pa.array([encoder] * n, type=pa.string()),
        ],
        schema=embedding_schema(dim),
    )


def conform_embeddings(table: pa.Table) -> pa.Table:
    """A table read from boundary-1 files with the columns ``embedding_schema`` names typed as
    there: an all-null column stored as type null gets its type, and an ``embedding`` list
    written with the compliant child name ("element": online batches written before
    ``USE_COMPLIANT_NESTED_TYPE``) becomes ``fixed_size_list<item: float>``. Other columns,
    and columns of a conflicting type (their readers check), are left as they are."""
    kind = table.schema.field("embedding").type if "embedding" in table.column_names else None
    dim = kind.list_size if kind is not None and pa.types.is_fixed_size_list(kind) else None
    for field in embedding_schema(dim or 1):
        if field.name not in table.column_names or (field.name == "embedding" and dim is None):
            continue
        actual = table.schema.field(field.name).type
        if actual != field.type and (pa.types.is_null(actual) or (
                field.name == "embedding" and actual.value_type == pa.float32())):
            table = table.set_column(table.column_names.index(field.name), field.name,
                                     table.column(field.name).cast(field.type))
    return table


SKIPPED_SCHEMA = pa.schema([("key", pa.string()), ("source", pa.string()), ("reason", pa.string())])


def skipped_batch(rows: Sequence[Skipped]) -> pa.RecordBatch:
    """``Skipped`` rows as a RecordBatch of ``SKIPPED_SCHEMA``."""
    return pa.RecordBatch.from_arrays(
        [pa.array([getattr(r, name) for r in rows], pa.string()) for name in SKIPPED_SCHEMA.names],
        schema=SKIPPED_SCHEMA)


def rejected_batch(rows: Sequence[Rejected]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [
            {"key": r.key, "source": r.source, "stage": r.stage,
             "error_type": r.error_type, "message": r.message}
            for r in rows
        ],
        schema=REJECTED_SCHEMA,
    )


def embeddings_matrix(table: pa.Table) -> np.ndarray:
    """The `embedding` column of an embedding table as an (n, dim) float32 matrix."""
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
