"""Choose search defaults that reach a recall target, measured against exact search."""
from __future__ import annotations

import faiss
import numpy as np

from indexer.factory import nlist_of
from indexer.search import RERANK_FACTOR, set_nprobe


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force inner-product top-k row numbers (the ground truth)."""
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(np.ascontiguousarray(base, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of the true top-k found in the returned top-k (k = truth's width)."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def tune_nprobe(trained: faiss.Index, sample: np.ndarray, rerank: bool, target: float = 0.95,
                k: int = 10, queries: int = 256, seed: int = 0) -> tuple[int, dict[int, float]]:
    """Smallest nprobe whose recall@k on the sample reaches ``target``; if none does, the one
    past which recall stops improving (PQ's own error caps recall without re-ranking).

    The sample is indexed with the trained quantizer and searched for held-in queries: recall
    as a function of nprobe depends on the data's geometry, not on the memory's size.
    """
    nlist = nlist_of(_factory_string(trained))
    if not nlist:
        return 0, {}
    index = faiss.clone_index(trained)
    index.add_with_ids(np.ascontiguousarray(sample), np.arange(len(sample), dtype=np.int64))
    rng = np.random.default_rng(seed)
    query_rows = rng.choice(len(sample), size=min(queries, len(sample)), replace=False)
    truth = exact_topk(sample, sample[query_rows], k)
    curve: dict[int, float] = {}
    nprobe = 1
    while nprobe <= nlist:
        set_nprobe(index, nprobe)
        fetch = k * RERANK_FACTOR if rerank else k
        _, ids = index.search(np.ascontiguousarray(sample[query_rows]), fetch)
        if rerank:
            exact = np.einsum("qkd,qd->qk", sample[np.maximum(ids, 0)], sample[query_rows])
            exact = np.where(ids >= 0, exact, -np.inf)
            ids = np.take_along_axis(ids, np.argsort(-exact, axis=1), axis=1)
        curve[nprobe] = recall_at(ids[:, :k], truth)
        if curve[nprobe] >= target:
            return nprobe, curve
        nprobe *= 2
    best = max(curve.values())
    return min(p for p, r in curve.items() if r >= best - 0.005), curve


def _factory_string(index: faiss.Index) -> str:
    ivf = faiss.try_extract_index_ivf(index)
    return f"IVF{ivf.nlist}" if ivf is not None else ""
