"""What a shard answers (neighbours with their metadata) and how answers merge into one top-k.

Shared by the online router (answers from shard deployments) and batch jobs (answers from
in-process searchers), so both rank and explain identically.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indexer.search import SearchParams, ShardSearcher, topk_order

META_FIELDS = ("key", "source", "label", "weight")


@dataclass
class ShardAnswer:
    scores: np.ndarray  # (n, k) cosine similarity, -inf where missing
    ids: np.ndarray  # (n, k) int64, -1 where missing
    meta: dict[str, np.ndarray]  # META_FIELDS -> (n, k): text as object (None if missing), weight float64 (NaN)
    version: str = ""
    shard: int = -1
    vectors: np.ndarray | None = None  # (n, k, dim), only when a re-ranker asked for them

    def first(self, k: int) -> "ShardAnswer":
        """The first k neighbours of every query (a prefix: answers are in top-k order)."""
        if self.ids.shape[1] == k:
            return self
        return ShardAnswer(self.scores[:, :k], self.ids[:, :k], {f: v[:, :k] for f, v in self.meta.items()},
                           self.version, self.shard, None if self.vectors is None else self.vectors[:, :k])

    def select(self, rows: slice) -> "ShardAnswer":
        """The answers of some of the queries (a slice of rows)."""
        return ShardAnswer(self.scores[rows], self.ids[rows], {f: v[rows] for f, v in self.meta.items()},
                           self.version, self.shard, None if self.vectors is None else self.vectors[rows])


def answer(searcher: ShardSearcher, queries: np.ndarray, k: int,
           params: SearchParams | int | None = None, version: str = "", shard: int = -1,
           with_vectors: bool = False) -> ShardAnswer:
    """Search one shard and attach each neighbour's metadata (the shard owns it) and, for a
    re-ranker, each neighbour's vector. Reads only the k answers' rows: O(n k log N)."""
    scores, ids = searcher.search(queries, k, params)
    meta = searcher.lookup(ids, META_FIELDS)
    vectors = searcher.vectors_of(ids.reshape(-1)).reshape(*ids.shape, -1) if with_vectors else None
    return ShardAnswer(scores, ids, meta, version, shard, vectors)


def empty_answer(n: int, version: str = "") -> ShardAnswer:
    """An answer with no neighbour for each of ``n`` queries: (n, 0) arrays."""
    meta = {f: np.empty((n, 0), dtype=np.float64 if f == "weight" else object) for f in META_FIELDS}
    return ShardAnswer(np.empty((n, 0), np.float32), np.empty((n, 0), np.int64), meta, version)


def merge_answers(answers: list[ShardAnswer], k: int) -> ShardAnswer:
    """The k best neighbours per query over all shards, with their metadata. One answer is
    already in (score desc, id asc) order: its first k are returned as they are."""
    if len(answers) == 1:
        return answers[0].first(min(k, answers[0].ids.shape[1]))
    scores = np.concatenate([a.scores for a in answers], axis=1)
    ids = np.concatenate([a.ids for a in answers], axis=1)
    order = topk_order(scores, ids, k)
    merged = {field: np.take_along_axis(np.concatenate([a.meta[field] for a in answers], axis=1),
                                        order, axis=1) for field in META_FIELDS}
    merged_ids = np.take_along_axis(ids, order, axis=1)
    merged_scores = np.where(merged_ids < 0, -np.inf, np.take_along_axis(scores, order, axis=1))
    vectors = (np.take_along_axis(np.concatenate([a.vectors for a in answers], axis=1), order[..., None], axis=1)
               if all(a.vectors is not None for a in answers) else None)
    versions = {a.version for a in answers}
    return ShardAnswer(merged_scores, merged_ids, merged, versions.pop() if len(versions) == 1 else "mixed",
                       vectors=vectors)


def concatenate(parts: list[ShardAnswer]) -> ShardAnswer:
    """Answers of consecutive query chunks as one answer (the inverse of ``select``)."""
    vectors = (np.concatenate([p.vectors for p in parts]) if all(p.vectors is not None for p in parts)
               else None)
    return ShardAnswer(np.concatenate([p.scores for p in parts]), np.concatenate([p.ids for p in parts]),
                       {f: np.concatenate([p.meta[f] for p in parts]) for f in META_FIELDS},
                       parts[0].version, parts[0].shard, vectors)


def reordered(merged: ShardAnswer, order: np.ndarray) -> ShardAnswer:
    """The same neighbours in a new per-query column order (what a re-ranker returns)."""
    take = lambda values: np.take_along_axis(values, order, axis=1)  # noqa: E731
    return ShardAnswer(take(merged.scores), take(merged.ids), {f: take(v) for f, v in merged.meta.items()},
                       merged.version, merged.shard,
                       None if merged.vectors is None else np.take_along_axis(merged.vectors, order[..., None], axis=1))
