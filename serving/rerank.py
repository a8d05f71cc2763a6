"""Re-rankers: an optional stage between retrieval and voting.

The paper re-ranks the top-50 neighbours with a vision-language model (method.md section 2,
"Gemini re-ranking"). Here the stage is an interface: a re-ranker sees the query embeddings and
the merged candidates (ids, cosine scores, labels and, when it asks for them, the candidates'
vectors) and returns a new column order; voting and evidence then follow that order. The
scores stay cosine similarities, so the evidence still reports true distances.

Implementations must be deterministic and need no network. One ships:
``PrototypeReranker`` re-scores each of the top candidates as its own similarity plus
``weight * cos(query, prototype(c))``, where prototype(c) is the mean embedding of the top
candidates labelled like it. Candidates of a class whose members surround the query (their mean
points at it) move up past a single closer look-alike whose class-mates point elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from serving.answers import ShardAnswer, reordered


@dataclass
class Candidates:
    ids: np.ndarray  # (n, k) int64, -1 where missing
    scores: np.ndarray  # (n, k) cosine similarity, -inf where missing
    labels: np.ndarray  # (n, k) object, None where missing
    vectors: np.ndarray | None = None  # (n, k, dim) float32, when the re-ranker needs them


class Reranker(Protocol):
    name: str
    needs_vectors: bool

    def order(self, queries: np.ndarray, candidates: Candidates) -> np.ndarray:
        """(n, k) column permutation: the new rank order of each query's candidates."""


@dataclass(frozen=True)
class PrototypeReranker:
    top: int = 50  # candidates re-scored (the paper gives its re-ranker the top 50)
    weight: float = 1.0  # weight of the class-prototype similarity
    name: str = "prototype"
    needs_vectors: bool = True

    def order(self, queries: np.ndarray, candidates: Candidates) -> np.ndarray:
        if candidates.vectors is None:
            raise ValueError("the prototype re-ranker needs the candidates' vectors")
        n, k = candidates.ids.shape
        order = np.tile(np.arange(k), (n, 1))
        top = min(self.top, k)
        for row in range(n):
            valid = np.flatnonzero(candidates.ids[row, :top] >= 0)
            if len(valid) < 2:
                continue
            labels = candidates.labels[row, valid]
            vectors = candidates.vectors[row, valid].astype(np.float64)
            rescored = candidates.scores[row, valid].astype(np.float64).copy()
            for label in set(labels.tolist()):
                members = labels == label
                prototype = vectors[members].sum(axis=0)
                prototype /= max(np.linalg.norm(prototype), 1e-12)
                rescored[members] += self.weight * float(prototype @ queries[row])
            # Stable sort: equal re-scores keep retrieval order (determinism).
            order[row, valid] = valid[np.argsort(-rescored, kind="stable")]
        return order


RERANKERS = {"prototype": PrototypeReranker}


def rerank_answer(reranker: Reranker, queries: np.ndarray, merged: ShardAnswer) -> ShardAnswer:
    """Merged neighbours (with vectors when the re-ranker needs them) in the re-ranker's order."""
    candidates = Candidates(merged.ids, merged.scores, merged.meta["label"], merged.vectors)
    return reordered(merged, reranker.order(np.asarray(queries, dtype=np.float64), candidates))


def make_reranker(name: str, top: int = 50, weight: float = 1.0) -> Reranker:
    if name not in RERANKERS:
        raise ValueError(f"rerank must be one of {sorted(RERANKERS)}, not {name!r}")
    return RERANKERS[name](top=top, weight=weight)
