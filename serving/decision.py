"""Turn merged neighbours into a decision with its evidence (method.md section 7).

The evidence is every neighbour's id, key, source, label, distance, rank, item weight and vote
weight, so each answer can be explained by — and edited through — the memory items behind it.
The JSON form gives the id also as a decimal string (``id_str``): ids are 64-bit, beyond the 53
bits a JavaScript number holds, and a key may name several items (one per batch), so a browser
names an item by ``id_str``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from serving.aggregation import Aggregator, class_scores, encode_labels, predict_every_k

UNKNOWN = "unknown"


@dataclass
class Neighbour:
    id: int
    key: str
    source: str
    label: str
    distance: float  # 1 - cosine similarity
    rank: int  # 0-based
    item_weight: float  # soft-pruning reliability, 1.0 when unpruned
    vote: float | None  # the aggregator's weight (item weight included); None: no vote taken


@dataclass
class Decision:
    label: str  # the winning label, or "unknown" below the evidence threshold
    scores: dict[str, float]  # per-class vote sums
    confidence: float  # winner's share of all votes
    neighbours: list[Neighbour] = field(default_factory=list)

    def to_dict(self, with_evidence: bool = True) -> dict:
        """JSON-ready fields (a shallow build: ``dataclasses.asdict`` deep-copies every value);
        each neighbour's id also as ``id_str``, its decimal string."""
        out = {"label": self.label, "scores": dict(self.scores), "confidence": self.confidence}
        if with_evidence:
            out["neighbours"] = [{**vars(n), "id_str": str(n.id)} for n in self.neighbours]
        return out


def decide(ids: np.ndarray, scores: np.ndarray, metadata: dict[str, np.ndarray],
           aggregator: Aggregator, unknown_below: float = 0.0) -> list[Decision]:
    """Neighbours of n queries -> n decisions.

    ``ids``/``scores``: (n, k) merged top-k (id -1 where fewer than k exist); ``metadata``: for
    the same (n, k) positions, arrays of "key", "source", "label" (None when missing) and
    "weight". ``unknown_below``: answer "unknown" when the winner's share of the votes is lower.
    """
    distances = 1.0 - np.where(ids >= 0, scores, np.nan)
    item_weights = np.where(ids >= 0, np.nan_to_num(metadata["weight"].astype(float), nan=1.0), 0.0)
    votes = np.nan_to_num(aggregator.weights(np.nan_to_num(distances, nan=1.0), item_weights))
    codes, vocabulary = encode_labels(np.where(ids >= 0, metadata["label"], None))
    exact = aggregator.exact_weights(np.nan_to_num(distances, nan=1.0), item_weights)
    per_class = class_scores(codes, votes, len(vocabulary), exact=exact)
    final = (predict_every_k(codes, votes, len(vocabulary), exact=exact)[:, -1] if ids.shape[1]
             else np.full(len(ids), -1))
    decisions = []
    for row in range(len(ids)):
        total = float(per_class[row].sum())
        winner = int(final[row])
        confidence = float(per_class[row, winner] / total) if winner >= 0 and total > 0 else 0.0
        label = vocabulary[winner] if winner >= 0 and confidence >= unknown_below else UNKNOWN
        neighbours = [Neighbour(int(ids[row, j]), str(metadata["key"][row, j]),
                                str(metadata["source"][row, j]), str(metadata["label"][row, j]),
                                float(distances[row, j]), j, float(item_weights[row, j]),
                                float(votes[row, j]))
                      for j in range(ids.shape[1]) if ids[row, j] >= 0]
        decisions.append(Decision(label, {vocabulary[c]: float(per_class[row, c])
                                          for c in np.flatnonzero(per_class[row] > 0)},
                                  confidence, neighbours))
    return decisions
