"""Ground truth for indexer tests: the embeddings as ingested, and brute-force search."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.manifest import list_batches, read_embeddings
from pipelines.schema import embeddings_matrix


def load_embeddings(root: str, batches: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    tables = [read_embeddings(root, b) for b in (batches or list_batches(root))]
    table = pa.concat_tables(tables)
    return table.column("id").to_numpy(), embeddings_matrix(table), table.column("label").to_pylist()


def brute_force(ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int):
    """Exact top-k by inner product, ties broken by id (the order merge_topk promises)."""
    scores = queries @ vectors.T
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]
