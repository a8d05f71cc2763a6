"""Boundary 1 on storage: the Arrow schemas of embedding shards and rejected rows.

The indexer reads these files; nothing else about the pipeline leaks downstream.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from pipelines.records import Rejected

REJECTED_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)


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
