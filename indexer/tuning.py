"""Search defaults measured on the built index: recall that a query really gets.

Queries are drawn from the memory (seeded) and held out leave-one-out: each query's own item
is removed from its exact neighbours and from what the index returns, so a query cannot score
by finding itself. Ground truth is brute force over every part of the input, streamed part by
part as tasks (``exact_part_topk``), merged with the serving merge. The built shards are then
searched as serving searches them (the same ``ShardSearcher``, re-rank vectors read from
disk), for k = 10 and the serving k.

Choice (cost-bounded, as autofaiss bounds query time): candidates are nprobe = 1, 2, 4, ...
up to ``max_nprobe_fraction`` x nlist (at least 8) and, when vectors are kept, re-rank factors 4, 8, 16.
The cheapest pair reaching ``target`` at both k is taken; if none does, the cheapest pair
within 0.005 of the best mean recall (over the k) seen — the plateau — and the manifest says
the target was missed. Recall@k = |returned top-k ∩ exact top-k| / k (faiss wiki, "Index IO and
benchmarks"), averaged over queries.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from indexer.reader import Part, iter_part
from indexer.search import K_FACTOR, SearchParams, merge_topk

log = logging.getLogger("vmem.index")
K_FACTORS = (K_FACTOR, 8, 16)
PLATEAU = 0.005


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


def sample_queries(part: Part, probability: float, seed: int, part_number: int,
                   chunk_rows: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """A seeded Bernoulli sample of one part's (ids, vectors), independent of the training
    sample's stream (seed sequence [seed, part, 1]); the part is read in chunks."""
    rng = np.random.default_rng([seed, part_number, 1])
    ids, vectors = [], []
    for meta, chunk in iter_part(part, chunk_rows):
        keep = rng.random(len(chunk)) < probability
        ids.append(meta.column("id").to_numpy()[keep])
        vectors.append(chunk[keep])
    if not ids:
        return np.empty(0, np.int64), np.empty((0, 0), np.float32)
    return np.concatenate(ids), np.concatenate(vectors)


def exact_part_topk(part: Part, queries: np.ndarray, k: int,
                    chunk_rows: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k of ``queries`` within one part: (n, k) scores, ids;
    the part is read in chunks, each chunk's top-k merged with the serving merge."""
    queries = np.asarray(queries, dtype=np.float32)
    best = (np.full((len(queries), 0), -np.inf, np.float32), np.full((len(queries), 0), -1, np.int64))
    for meta, vectors in iter_part(part, chunk_rows):
        scores = queries @ np.asarray(vectors, dtype=np.float32).T
        found = chunk_topk(scores, meta.column("id").to_numpy(), k)
        best = merge_topk([best[0], found[0]], [best[1], found[1]], k)
    return best


def chunk_topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The tie-complete top-k of (n, m) ``scores`` over columns labelled ``ids`` (m,), in
    ``search.topk_order``: a partial sort (``np.argpartition``, O(n·m)) keeps every column
    scoring at least the k-th best score, and only those are sorted (by score, then id)."""
    width = min(k, scores.shape[1])
    if not width:
        return merge_topk([scores], [np.broadcast_to(ids, scores.shape)], k)
    best = np.argpartition(-scores, width - 1, axis=1)[:, :width]
    threshold = np.take_along_axis(scores, best, axis=1).min(axis=1, keepdims=True)
    rows, cols = np.nonzero(scores >= threshold)
    counts = np.bincount(rows, minlength=len(scores))
    position = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    kept_scores = np.full((len(scores), counts.max()), -np.inf, dtype=scores.dtype)
    kept_ids = np.full((len(scores), counts.max()), -1, dtype=np.int64)
    kept_scores[rows, position] = scores[rows, cols]
    kept_ids[rows, position] = ids[cols]
    return merge_topk([kept_scores], [kept_ids], k)


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


def draw_queries(executor, parts: list[Part], count: int, wanted: int, seed: int,
                 chunk_rows: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    probability = min(1.0, 1.5 * wanted / max(count, 1))
    drawn = executor.get([executor.submit(sample_queries, part, probability, seed, number, chunk_rows)
                          for number, part in enumerate(parts)], "drawing tuning queries")
    drawn = [d for d in drawn if len(d[0])]
    ids = np.concatenate([d[0] for d in drawn])
    vectors = np.concatenate([d[1] for d in drawn])
    keep = np.random.default_rng([seed, 2]).permutation(len(ids))[:wanted]
    return ids[keep], np.ascontiguousarray(vectors[keep], dtype=np.float32)


def ground_truth(executor, parts: list[Part], queries: np.ndarray, k: int,
                 chunk_rows: int = 1 << 16) -> np.ndarray:
    """(n, k) exact neighbour ids over every part (ties by id), streamed as one task a part,
    ``chunk_rows`` rows at a time."""
    answers = executor.get([executor.submit(exact_part_topk, part, queries, k, chunk_rows) for part in parts],
                           "exact neighbours")
    return merge_topk([a[0] for a in answers], [a[1] for a in answers], k)[1]


def tune(index, executor, parts: list[Part], count: int, ks: tuple[int, ...] = (10, 100),
         target: float = 0.95, queries: int = 256, max_nprobe_fraction: float = 0.125,
         seed: int = 0, chunk_rows: int = 1 << 16) -> TuningResult:
    """Search defaults for ``index`` (an indexer.search.ShardedIndex over the built shards).
    ``chunk_rows``: rows its tasks read at once (the build's task budget, tasks.chunk_rows_for)."""
    ks = tuple(sorted({max(1, min(k, count - 1)) for k in ks}))
    query_ids, vectors = draw_queries(executor, parts, count, queries, seed, chunk_rows)
    deepest = max(ks)
    truth = without_self(ground_truth(executor, parts, vectors, deepest + 1, chunk_rows), query_ids, deepest)
    nlist = max((shard.nlist for shard in index.shards), default=0)
    rerank = any(shard.vectors is not None for shard in index.shards)
    probes = [0] if not nlist else _powers(min(nlist, max(8, int(nlist * max_nprobe_fraction))))
    factors = K_FACTORS if rerank and nlist else (K_FACTOR,)
    curve, tried = [], []
    for k_factor in factors:
        for nprobe in probes:
            params = SearchParams(nprobe, rerank, k_factor)
            _, found = index.search(vectors, deepest + 1, params)
            found = without_self(found, query_ids, deepest)
            recall = {k: recall_at(found[:, :k], truth[:, :k]) for k in ks}
            curve.append({"nprobe": nprobe, "k_factor": k_factor,
                          **{f"recall_at_{k}": round(r, 4) for k, r in recall.items()}})
            log.info("tuning: nprobe %d, k_factor %d: %s", nprobe, k_factor,
                     ", ".join(f"recall@{k} {r:.4f}" for k, r in recall.items()))
            if min(recall.values()) >= target:
                return TuningResult(params, recall, True, len(query_ids), curve)
            tried.append((params, recall))
    top = max(_mean(recall) for _, recall in tried)
    params, recall = next((p, r) for p, r in tried if _mean(r) >= top - PLATEAU)
    log.warning("no nprobe <= %d reaches recall %.2f at k = %s; using nprobe %d (recall %s)",
                probes[-1], target, ks, params.nprobe, recall)
    return TuningResult(params, recall, False, len(query_ids), curve)


def _mean(recall: dict[int, float]) -> float:
    return sum(recall.values()) / len(recall)


def _powers(limit: int) -> list[int]:
    values, value = [], 1
    while value < limit:
        values.append(value)
        value *= 2
    return values + [limit]
