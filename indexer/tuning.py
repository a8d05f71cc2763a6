"""Search defaults measured on the built index: recall that a query really gets.

Queries are drawn from the memory (seeded) and held out leave-one-out: each query's own item
is removed from its exact neighbours and from what the index returns, so a query cannot score
by finding itself. The build draws them in its sampling pass (``tasks.sample_part``, seed
sequence [seed, part, 1], then ``pick_queries``) and computes their exact neighbours in its add
pass (``ExactTopK``: brute force over every chunk each add task reads, merged with the serving
merge), so tuning reads the input no more: no pass of its own. The built shards are then
searched as serving searches them (the same ``ShardSearcher``, re-rank vectors read from
disk), for k = 10 and the serving k.

Choice (cost-bounded, as autofaiss bounds query time): candidates are nprobe = 1, 2, 4, ...
up to ``max_nprobe_fraction`` x nlist (at least 8) and, when vectors are kept, re-rank factors 4, 8, 16.
The cheapest pair reaching ``target`` at both k is taken; if none does, the cheapest pair
within 0.005 of the best mean recall (over the k) seen — the plateau — and the manifest says
the target was missed. A sweep over nprobe (for one re-rank factor) stops early once two
doublings in a row have raised the mean recall by less than that 0.005 together: past that
point the curve is flat (the codes, not nprobe, bound recall) and every further step costs
twice the last, the largest share of the sweep at scale (nprobe up to nlist / 8). Recall@k = |returned top-k ∩ exact top-k| / k (faiss wiki, "Index IO and
benchmarks"), averaged over queries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from indexer.search import K_FACTOR, SearchParams, merge_topk

log = logging.getLogger("vmem.index")
K_FACTORS = (K_FACTOR, 8, 16)
PLATEAU = 0.005
QUERIES = 256  # held-out tuning queries a build draws


def tuning_ks(count: int, ks: tuple[int, ...]) -> tuple[int, ...]:
    """The k tuned for, each within a memory of ``count`` items that holds out the query."""
    return tuple(sorted({max(1, min(k, count - 1)) for k in ks}))


def pick_queries(ids: np.ndarray, vectors: np.ndarray, wanted: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``wanted`` of the drawn (ids (n,), vectors (n, d)), chosen by a seeded permutation
    (seed sequence [seed, 2]); returns (ids, float32 C-contiguous vectors)."""
    keep = np.random.default_rng([seed, 2]).permutation(len(ids))[:wanted]
    return ids[keep], np.ascontiguousarray(vectors[keep], dtype=np.float32)


BLOCK_ROWS = 32768  # rows ExactTopK scores at once: (n, 32768) float32 scores, 32 MiB at n = 256


class ExactTopK:
    """Brute-force inner-product top-k of fixed (n, d) float32 ``queries`` over rows seen chunk
    by chunk (``update``), ties by id (search.topk_order): an add task feeds it the chunks it
    reads, so exact neighbours cost no pass of their own. ``result`` is ((n, k) float32
    scores, (n, k) int64 ids), padded with (-inf, -1) while fewer than k rows were seen."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        n = len(self.queries)
        self.result = (np.full((n, 0), -np.inf, np.float32), np.full((n, 0), -1, np.int64))

    def update(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Fold in (m, d) ``vectors`` labelled ``ids`` (m,) int64, ``BLOCK_ROWS`` at a time.
        Once every query holds k neighbours, a column scoring below a query's k-th best so far
        cannot enter its top-k (a tie can, by id): only the columns at or above it are kept and
        sorted, which after the first block is a few per query instead of a partial sort of
        all of them. Blocks bound the scores held ((n, BLOCK_ROWS) float32) and the partial
        sort of the first, whatever the chunk's size: a task at d = 64 reads 190,650 rows at
        once, whose one partial sort over 256 queries took 1.1 CPU-s."""
        if not len(self.queries) or not len(ids):
            return
        rows = np.asarray(vectors, dtype=np.float32)
        for start in range(0, len(ids), BLOCK_ROWS):
            self._fold(rows[start:start + BLOCK_ROWS], ids[start:start + BLOCK_ROWS])

    def _fold(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        scores = self.queries @ vectors.T
        best = self.result[0]
        if best.shape[1] == self.k and self.k and np.isfinite(best[:, -1]).all():
            found = kept_at_least(scores, ids, best[:, -1:])
        else:
            found = chunk_topk(scores, ids, self.k)
        self.result = merge_topk([self.result[0], found[0]], [self.result[1], found[1]], self.k)


@dataclass
class TuningResult:
    params: SearchParams
    recall: dict[int, float]  # k -> recall@k at ``params``
    reached_target: bool
    queries: int
    curve: list[dict] = field(default_factory=list)  # every (nprobe, k_factor) tried

    def defaults(self) -> dict:
        """The manifest's ``search_defaults`` entries this result sets."""
        return {"nprobe": self.params.nprobe, "k_factor": self.params.k_factor,
                **{f"recall_at_{k}": round(r, 4) for k, r in self.recall.items()}}

    def details(self) -> dict:
        return {"tuning_queries": self.queries, "tuning_reached_target": self.reached_target,
                "tuning_curve": self.curve}


def chunk_topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The tie-complete top-k of (n, m) ``scores`` over columns labelled ``ids`` (m,), in
    ``search.topk_order``: a partial sort (``np.argpartition``, O(n·m)) keeps every column
    scoring at least the k-th best score, and only those are sorted (by score, then id)."""
    width = min(k, scores.shape[1])
    if not width:
        return merge_topk([scores], [np.broadcast_to(ids, scores.shape)], k)
    best = np.argpartition(-scores, width - 1, axis=1)[:, :width]
    threshold = np.take_along_axis(scores, best, axis=1).min(axis=1, keepdims=True)
    kept_scores, kept_ids = kept_at_least(scores, ids, threshold)
    return merge_topk([kept_scores], [kept_ids], k)


def kept_at_least(scores: np.ndarray, ids: np.ndarray,
                  threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of (n, m) ``scores`` (columns labelled ``ids`` (m,)), the columns scoring at
    least that row's ``threshold`` ((n, 1)), unsorted: ((n, w) scores, (n, w) ids), padded
    with (-inf, -1) to the widest row (w >= 1)."""
    rows, cols = np.nonzero(scores >= threshold)
    counts = np.bincount(rows, minlength=len(scores))
    position = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    width = max(int(counts.max()) if len(counts) else 0, 1)
    kept_scores = np.full((len(scores), width), -np.inf, dtype=scores.dtype)
    kept_ids = np.full((len(scores), width), -1, dtype=np.int64)
    kept_scores[rows, position] = scores[rows, cols]
    kept_ids[rows, position] = ids[cols]
    return kept_scores, kept_ids


def without_self(ids: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    """Each row's ids minus the query's own id, first k kept (order preserved), -1 padded."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for row, (found, own) in enumerate(zip(ids, query_ids)):
        kept = found[found != own][:k]
        out[row, :len(kept)] = kept
    return out


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / (valid truth entries) (truth's width = k)."""
    values = []
    for f, t in zip(found, truth):
        valid = set(t[t >= 0].tolist())
        if valid:
            values.append(len(valid & set(f.tolist())) / len(valid))
    return float(np.mean(values)) if values else 1.0


def candidates(nlist: int, rerank: bool, max_nprobe_fraction: float = 0.125) -> list[SearchParams]:
    """Every search setting tuning may try, in the order it tries them (the module's
    docstring): for each re-rank factor (4, 8, 16 when vectors are kept; else the default),
    nprobe = 1, 2, 4, ... up to ``max_nprobe_fraction`` x nlist (at least 8, at most nlist);
    nprobe 0 (none to set) for an exact index (nlist 0)."""
    probes = [0] if not nlist else _powers(min(nlist, max(8, int(nlist * max_nprobe_fraction))))
    factors = K_FACTORS if rerank and nlist else (K_FACTOR,)
    return [SearchParams(nprobe, rerank, k_factor) for k_factor in factors for nprobe in probes]


def tune(index, query_ids: np.ndarray, queries: np.ndarray, exact_ids: np.ndarray, count: int,
         ks: tuple[int, ...] = (10, 100), target: float = 0.95,
         max_nprobe_fraction: float = 0.125, stop_on_plateau: bool = True) -> TuningResult:
    """Search defaults for ``index``: the built shards, searched where they are
    (indexer.search.ShardedIndex, in this process; indexer.sweep.SweptIndex, one task per
    shard), anything with ``search(queries, k, params) -> ((n, k) scores, (n, k) ids)``,
    ``nlist`` and ``reranks`` (vectors kept). Measured with held-out ``queries`` ((n, d)
    float32, drawn from the memory: their own ids ``query_ids`` (n,)) whose exact neighbours
    over the whole memory are ``exact_ids`` (n, w) int64, best first, the query itself
    included, w >= max(tuning_ks(count, ks)) + 1. ``stop_on_plateau`` False sweeps every
    candidate nprobe (the module's docstring). A progress bar counts the searches. Raises
    ValueError when ``exact_ids`` is too narrow."""
    from itertools import groupby

    from indexer.executor import progress

    ks = tuning_ks(count, ks)
    deepest = max(ks)
    if exact_ids.shape[1] < deepest + 1:
        raise ValueError(f"exact neighbours {exact_ids.shape[1]} wide; tuning k = {deepest} needs {deepest + 1}")
    truth = without_self(exact_ids[:, :deepest + 1], query_ids, deepest)
    vectors = np.ascontiguousarray(queries, dtype=np.float32)
    settings = candidates(index.nlist, index.reranks, max_nprobe_fraction)
    curve, tried = [], []
    with progress("tuning", len(settings), "searches") as bar:
        for _, sweep in groupby(settings, key=lambda params: params.k_factor):
            swept: list[tuple[int, float]] = []  # (nprobe, mean recall) for this k_factor
            for params in sweep:
                if stop_on_plateau and len(swept) >= 3 and swept[-1][1] - swept[-3][1] < PLATEAU:
                    log.info("tuning: recall flat from nprobe %d to %d; sweep stopped", swept[-3][0], swept[-1][0])
                    break
                _, found = index.search(vectors, deepest + 1, params)
                bar.update(1)
                found = without_self(found, query_ids, deepest)
                recall = {k: recall_at(found[:, :k], truth[:, :k]) for k in ks}
                curve.append({"nprobe": params.nprobe, "k_factor": params.k_factor,
                              **{f"recall_at_{k}": round(r, 4) for k, r in recall.items()}})
                log.info("tuning: nprobe %d, k_factor %d: %s", params.nprobe, params.k_factor,
                         ", ".join(f"recall@{k} {r:.4f}" for k, r in recall.items()))
                if min(recall.values()) >= target:
                    return TuningResult(params, recall, True, len(query_ids), curve)
                tried.append((params, recall))
                swept.append((params.nprobe, _mean(recall)))
    top = max(_mean(recall) for _, recall in tried)
    params, recall = next((p, r) for p, r in tried if _mean(r) >= top - PLATEAU)
    log.warning("no nprobe <= %d reaches recall %.2f at k = %s; using nprobe %d (recall %s)",
                max(p.nprobe for p, _ in tried), target, ks, params.nprobe, recall)
    return TuningResult(params, recall, False, len(query_ids), curve)


def _mean(recall: dict[int, float]) -> float:
    return sum(recall.values()) / len(recall)


def _powers(limit: int) -> list[int]:
    values, value = [], 1
    while value < limit:
        values.append(value)
        value *= 2
    return values + [limit]
