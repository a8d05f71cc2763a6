"""Accuracy of every aggregator at every k = 1..K in one pass over stored neighbours
(method.md section 2: fixed-k and best-over-k). Used by ``vmem eval`` and every experiment."""
from __future__ import annotations

import numpy as np

from serving.aggregation import AGGREGATORS, Aggregator, encode_labels, predict_every_k
from serving.batch import read_predictions


def padded(rows: list[list], width: int, fill) -> np.ndarray:
    """Ragged per-query lists -> an (n, width) array (object when fill is None)."""
    out = np.full((len(rows), width), fill, dtype=object if fill is None else float)
    for i, row in enumerate(rows):
        out[i, :min(len(row), width)] = row[:width]
    return out


def predictions_every_k(neighbour_labels: np.ndarray, distances: np.ndarray,
                        item_weights: np.ndarray | None, aggregator: Aggregator,
                        vocabulary: list[str]) -> np.ndarray:
    """(n, K) predicted vocabulary codes, column j voting with the first j + 1 neighbours."""
    codes, _ = encode_labels(neighbour_labels, vocabulary)
    votes = aggregator.weights(np.nan_to_num(distances, nan=1.0), item_weights)
    exact = aggregator.exact_weights(distances, item_weights)
    return predict_every_k(codes, np.where(codes >= 0, votes, 0.0), len(vocabulary), exact=exact)


def accuracy_curves(neighbour_labels: np.ndarray, distances: np.ndarray,
                    item_weights: np.ndarray | None, truth: np.ndarray,
                    aggregators: list[Aggregator] | None = None) -> dict:
    """Per aggregator: accuracy at every k, the best k and its accuracy, accuracy at K.
    ``neighbour_labels`` (n, K) objects (None where missing), ``distances`` 1 - cosine."""
    vocabulary = sorted({l for l in neighbour_labels.reshape(-1).tolist() if l is not None}
                        | {l for l in truth.tolist() if l})
    truth_codes, _ = encode_labels(np.asarray(truth, dtype=object), vocabulary)
    report = {}
    for aggregator in aggregators or [Aggregator(m) for m in AGGREGATORS]:
        predictions = predictions_every_k(neighbour_labels, distances, item_weights, aggregator, vocabulary)
        accuracy = (predictions == truth_codes[:, None]).mean(axis=0)
        best = int(np.argmax(accuracy))
        report[aggregator.method] = {
            "parameter": aggregator.value, "accuracy_at_k": np.round(accuracy, 6).tolist(),
            "best_k": best + 1, "best_accuracy": round(float(accuracy[best]), 6),
            "accuracy_at_max_k": round(float(accuracy[-1]), 6)}
    return report


def accuracy_by_k(out: str, max_k: int = 100, use_item_weights: bool = True) -> dict:
    """The curves of a ``vmem classify`` run's stored neighbours (labelled queries only)."""
    table = read_predictions(out)
    truth = table.column("label").to_pylist()
    keep = [i for i, label in enumerate(truth) if label]
    column = {name: table.column(name).to_pylist() for name in
              ("neighbour_labels", "neighbour_distances", "neighbour_weights")}
    labels = padded([column["neighbour_labels"][i] for i in keep], max_k, None)
    distances = padded([column["neighbour_distances"][i] for i in keep], max_k, 1.0)
    weights = padded([column["neighbour_weights"][i] for i in keep], max_k, 0.0)
    curves = accuracy_curves(labels, distances, weights if use_item_weights else None,
                             np.asarray([truth[i] for i in keep], dtype=object))
    return {"queries": len(keep), "max_k": max_k, "aggregators": curves}
