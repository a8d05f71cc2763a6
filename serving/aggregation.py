"""Neighbour-label aggregation exactly as method.md section 2 defines it (numpy in, numpy out).

Weights per neighbour at 0-based rank r with distance d = 1 - cosine:
  plurality 1 | distance exp(-d)^xi (xi=1) | softmax exp((1-d)/tau) (tau=0.07) | rank 1/(r+alpha) (alpha=2)
multiplied by each item's stored weight (soft pruning). Class scores are weight sums. The
prediction for every prefix k = 1..K comes from one pass in rank order; the predicted class
changes only when a class's sum becomes strictly greater than the running maximum, so in a tie
the class that reached the value first wins (the reference code's rule, without its class-0 quirk).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AGGREGATORS = ("plurality", "distance", "softmax", "rank")
DEFAULT_PARAMETER = {"plurality": 0.0, "distance": 1.0, "softmax": 0.07, "rank": 2.0}
NO_NEIGHBOUR = -1


@dataclass(frozen=True)
class Aggregator:
    method: str = "rank"
    parameter: float | None = None  # xi, tau or alpha; None: the paper's default

    def __post_init__(self) -> None:
        if self.method not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {AGGREGATORS}, not {self.method!r}")
        if self.method == "rank" and self.value < 0.1:
            raise ValueError("rank voting needs alpha >= 0.1")
        if self.method == "softmax" and self.value <= 0:
            raise ValueError("softmax voting needs tau > 0")

    @property
    def value(self) -> float:
        return DEFAULT_PARAMETER[self.method] if self.parameter is None else float(self.parameter)

    def weights(self, distances: np.ndarray, item_weights: np.ndarray | None = None) -> np.ndarray:
        """(n, k) vote weights for neighbours sorted nearest first."""
        distances = np.asarray(distances, dtype=np.float64)
        if self.method == "plurality":
            weights = np.ones_like(distances)
        elif self.method == "distance":
            weights = np.exp(-distances) ** self.value
        elif self.method == "softmax":
            weights = np.exp((1.0 - distances) / self.value)
        else:
            ranks = np.arange(distances.shape[-1], dtype=np.float64)
            weights = np.broadcast_to(1.0 / (ranks + self.value), distances.shape).copy()
        if item_weights is not None:
            weights = weights * np.asarray(item_weights, dtype=np.float64)
        return weights


def predict_every_k(labels: np.ndarray, weights: np.ndarray, num_classes: int) -> np.ndarray:
    """(n, K) label codes -> (n, K) predictions, column j using the first j+1 neighbours.
    Label code -1 (no neighbour) contributes nothing; a query with no vote yet predicts -1."""
    labels = np.asarray(labels, dtype=np.int64)
    n, depth = labels.shape
    sums = np.zeros((n, num_classes + 1), dtype=np.float64)  # last column absorbs -1
    running_max = np.full(n, -np.inf)
    prediction = np.full(n, NO_NEIGHBOUR, dtype=np.int64)
    out = np.empty((n, depth), dtype=np.int64)
    rows = np.arange(n)
    for j in range(depth):
        column = np.where(labels[:, j] >= 0, labels[:, j], num_classes)
        sums[rows, column] += np.where(labels[:, j] >= 0, weights[:, j], 0.0)
        value = sums[rows, column]
        better = (labels[:, j] >= 0) & (value > running_max)
        running_max = np.where(better, value, running_max)
        prediction = np.where(better, column, prediction)
        out[:, j] = prediction
    return out


def class_scores(labels: np.ndarray, weights: np.ndarray, num_classes: int) -> np.ndarray:
    """(n, K) label codes and weights -> (n, num_classes) summed votes."""
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.zeros((labels.shape[0], num_classes + 1))
    np.add.at(scores, (np.arange(labels.shape[0])[:, None], np.where(labels >= 0, labels, num_classes)),
              np.where(labels >= 0, weights, 0.0))
    return scores[:, :num_classes]


def encode_labels(labels: np.ndarray, vocabulary: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """String labels (None for a missing neighbour) -> int codes and the vocabulary."""
    flat = [l for l in np.asarray(labels, dtype=object).reshape(-1).tolist() if l is not None]
    vocabulary = list(vocabulary) if vocabulary is not None else sorted(set(flat))
    index = {label: code for code, label in enumerate(vocabulary)}
    codes = np.array([index.get(l, NO_NEIGHBOUR) if l is not None else NO_NEIGHBOUR
                      for l in np.asarray(labels, dtype=object).reshape(-1).tolist()], dtype=np.int64)
    return codes.reshape(np.shape(labels)), vocabulary
