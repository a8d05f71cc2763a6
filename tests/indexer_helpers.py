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


def assert_same_topk(found: tuple[np.ndarray, np.ndarray], exact: tuple[np.ndarray, np.ndarray],
                     atol: float = 1e-5) -> None:
    """``found`` (scores, ids) equals the ``exact`` top-k, except that items whose exact
    scores differ by less than ``atol`` (float rounding: BLAS vs FAISS's per-item kernels, as
    with an ID selector) may swap places. Scores must agree within ``atol`` everywhere."""
    found_scores, found_ids = found
    exact_scores, exact_ids = exact
    np.testing.assert_allclose(found_scores, exact_scores, atol=atol)
    for row, pos in zip(*np.nonzero(found_ids != exact_ids)):
        near = np.abs(exact_scores[row] - exact_scores[row, pos]) < atol
        assert found_ids[row, pos] in set(exact_ids[row, near].tolist()) or (
            pos >= exact_ids.shape[1] - near[::-1].argmin()), (
            f"row {row}, rank {pos}: {found_ids[row, pos]} is not a near-tie of {exact_ids[row, pos]}")
