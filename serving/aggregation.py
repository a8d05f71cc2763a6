"""Neighbour-label aggregation exactly as method.md section 2 defines it (numpy in, numpy out).

Weights per neighbour at 0-based rank r with distance d = 1 - cosine:
  plurality 1 | distance exp(-d)^xi (xi=1) | softmax exp((1-d)/tau) (tau=0.07) | rank 1/(r+alpha) (alpha=2)
multiplied by each item's stored weight (soft pruning). Class scores are weight sums. The
prediction for every prefix k = 1..K comes from one pass in rank order; the predicted class
changes only when a class's sum becomes strictly greater than the running maximum, so in a tie
the class that reached the value first wins (the reference code's rule, without its class-0 quirk).

Exact votes. That rule only means something if ties are real ties: in float64, 1/2 + 1/12 comes
out larger than 1/3 + 1/4 although both are 7/12, which flips a few rank-voting decisions. For
plurality and rank voting every weight is rational: 1, or 1/(r + alpha) with alpha a float (an
exact dyadic rational), times an item weight that is a float64 and therefore exact too.
``Aggregator.exact_weights`` describes those weights exactly (``ExactWeights``: per-rank base
weights as integers over one common denominator, and the item weights as float64, each read
exactly); pass it as ``predict_every_k(..., exact=...)`` and every decision is the one exact
arithmetic makes. Without ``exact`` the float pass alone decides, as before.

How it stays fast: the vectorised float64 pass runs as before and also flags the rows where some
comparison "class sum > running maximum" was a near tie, |a - b| <= 1e-9 * (sum of |w| so far in
that row), unless both compared floats are known to be exact: a class sum is exact while every
weight added to it equals its exact value (a power-of-two base weight, e.g. plurality's 1, times
the item weight) and every addition had zero rounding error (TwoSum), so plurality ties of
unit or otherwise exactly summed votes cost nothing. Only the flagged rows are recomputed
exactly, with Python integers over a common denominator (base numerator * item-weight mantissa
shifted to the row's largest power-of-two denominator), and replace the float row. The
tolerance is safe by a wide margin: each float weight is within 3 ulps of its exact value and
each float partial sum of j terms is within about j ulps of the row's absolute sum, so a float
comparison can only disagree with the exact one when the two exact values are closer than
~2(K+3)*2^-53 * sum|w| (~2e-14 relative for K = 100). Rows with a non-finite item weight keep
the float result. The float weights passed must be ``weights()`` of the same arguments (or that
with the weights of missing neighbours zeroed, as ``serving/evaluate.py`` does).

Distance and softmax weights are transcendental (exp): they stay float64 and
``exact_weights`` returns None for them. ``class_scores`` stays float64 too, but with ``exact``
it returns each exact class sum correctly rounded, so exactly tied classes show equal scores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

AGGREGATORS = ("plurality", "distance", "softmax", "rank")
DEFAULT_PARAMETER = {"plurality": 0.0, "distance": 1.0, "softmax": 0.07, "rank": 2.0}
NO_NEIGHBOUR = -1
NEAR_TIE = 1e-9  # relative to the row's running sum of |weights|; see the module docstring
SMALL_BATCH = 16  # rows; up to this, predict_every_k runs exactly row by row in Python


@lru_cache(maxsize=64)
def _base_numerators(method: str, alpha: float, depth: int) -> tuple[tuple[int, ...], int]:
    """Per-rank base weights (1, or 1/(r + alpha)) as integers over one common denominator."""
    if method == "plurality":
        return (1,) * depth, 1
    offset = Fraction(alpha)  # exact: a float is a dyadic rational
    fractions = [1 / (r + offset) for r in range(depth)]
    denominator = math.lcm(*(f.denominator for f in fractions)) if fractions else 1
    return tuple(f.numerator * (denominator // f.denominator) for f in fractions), denominator


@dataclass(frozen=True, eq=False)
class ExactWeights:
    """Exact plurality/rank vote weights: w[i, r] = numerators[r] / denominator * item_weights[i, r].

    ``item_weights`` (n, K) float64 or None (all 1); every float is taken at its exact value."""
    numerators: tuple[int, ...]  # per rank
    denominator: int
    item_weights: np.ndarray | None = None

    @property
    def depth(self) -> int:
        return len(self.numerators)

    def row_numerators(self, row: int) -> tuple[list[int], int] | None:
        """Row ``row``'s weights as integer numerators over one positive common denominator,
        returned with it; None when an item weight is not finite."""
        if self.item_weights is None:
            return list(self.numerators), self.denominator
        items = self.item_weights[row]
        if not np.isfinite(items).all():
            return None
        ratios = [value.as_integer_ratio() for value in items.tolist()]  # denominators: powers of 2
        shift = max((d.bit_length() for _, d in ratios), default=1) - 1
        return ([base * (a << (shift - d.bit_length() + 1)) for base, (a, d) in zip(self.numerators, ratios)],
                self.denominator << shift)

    def row_fractions(self, row: int) -> list[Fraction]:
        """Row ``row``'s weights as Fractions (for inspection and tests)."""
        items = [1] * self.depth if self.item_weights is None else self.item_weights[row].tolist()
        return [Fraction(b, self.denominator) * Fraction(x) for b, x in zip(self.numerators, items)]

    def float_exact(self, weights: np.ndarray) -> np.ndarray:
        """(n, K) bool: where the float weight given equals the exact weight. A base weight
        1/(r + alpha) is a float only when it is a power of two, and then so is base * item
        unless it over- or underflows (which the round trip below catches)."""
        scale = np.full(self.depth, np.nan)  # NaN: never equal
        for r, numerator in enumerate(self.numerators):
            base = Fraction(numerator, self.denominator)
            if not (base.numerator & (base.numerator - 1) or base.denominator & (base.denominator - 1)):
                scale[r] = float(base)  # a power of two
        if self.item_weights is None:
            return weights == scale
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            return ((weights == self.item_weights * scale) & (weights / scale == self.item_weights)
                    & np.isfinite(weights))


@dataclass(frozen=True)
class Aggregator:
    method: str = "rank"
    parameter: float | None = None  # xi, tau or alpha; None: the paper's default

    def __post_init__(self) -> None:
        if self.method not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {AGGREGATORS}, not {self.method!r}")
        if not np.isfinite(self.value):  # nan passes every comparison below
            raise ValueError(f"the aggregator's parameter must be a finite number, not {self.value}")
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

    def exact_weights(self, distances: np.ndarray,
                      item_weights: np.ndarray | None = None) -> ExactWeights | None:
        """The exact values of ``weights(distances, item_weights)`` (same arguments) for
        plurality and rank voting, for ``predict_every_k(..., exact=...)``; None for distance
        and softmax voting, whose weights are transcendental. Distances only give the shape."""
        if self.method not in ("plurality", "rank"):
            return None
        shape = np.shape(distances)
        numerators, denominator = _base_numerators(self.method, self.value, shape[-1])
        items = None
        if item_weights is not None:
            items = np.broadcast_to(np.asarray(item_weights, dtype=np.float64), shape)
        return ExactWeights(numerators, denominator, items)


def _exact_row(labels: list[int], numerators: list[int]) -> list[int]:
    """The running-maximum rule of the module docstring on exact integer weights."""
    sums: dict[int, int] = {}
    best = None
    prediction = NO_NEIGHBOUR
    out = []
    for label, weight in zip(labels, numerators):
        if label >= 0:
            total = sums[label] = sums.get(label, 0) + weight
            if best is None or total > best:
                best, prediction = total, label
        out.append(prediction)
    return out


def _float_row(labels: list[int], weights: list[float]) -> list[int]:
    """The running-maximum rule on one row of float weights (what the vectorised pass does)."""
    sums: dict[int, float] = {}
    best, prediction, out = -math.inf, NO_NEIGHBOUR, []
    for label, weight in zip(labels, weights):
        if label >= 0:
            total = sums[label] = sums.get(label, 0.0) + weight
            if total > best:
                best, prediction = total, label
        out.append(prediction)
    return out


def _check_exact(exact: ExactWeights, labels: np.ndarray) -> None:
    shape = (labels.shape[0], exact.depth) if exact.item_weights is None else exact.item_weights.shape
    if shape != labels.shape:
        raise ValueError(f"exact weights of shape {shape} do not match labels of shape {labels.shape}")


def predict_every_k(labels: np.ndarray, weights: np.ndarray, num_classes: int,
                    exact: ExactWeights | None = None) -> np.ndarray:
    """(n, K) label codes -> (n, K) predictions, column j using the first j+1 neighbours.
    Label code -1 (no neighbour) contributes nothing; a query with no vote yet predicts -1.
    ``exact``: ``aggregator.exact_weights(...)`` for the same neighbours as ``weights``; with
    it, near ties are decided in exact arithmetic (module docstring)."""
    labels = np.asarray(labels, dtype=np.int64)
    n, depth = labels.shape
    if exact is not None:
        _check_exact(exact, labels)
    if n <= SMALL_BATCH:  # a few queries (online serving): one Python pass per row is faster
        rows_weights = np.broadcast_to(np.asarray(weights, dtype=np.float64), labels.shape).tolist()
        out = np.empty((n, depth), dtype=np.int64)
        for row in range(n):
            numerators = exact.row_numerators(row) if exact is not None else None
            out[row] = (_exact_row(labels[row].tolist(), numerators[0]) if numerators is not None
                        else _float_row(labels[row].tolist(), rows_weights[row]))
        return out
    votes = labels.T >= 0  # (K, n): one contiguous row per step
    columns = np.where(votes, labels.T, num_classes)  # the last column of sums absorbs -1
    weights = np.where(votes, np.asarray(weights, dtype=np.float64).T, 0.0)
    sums = np.zeros((n, num_classes + 1), dtype=np.float64)
    running_max = np.full(n, -np.inf)
    prediction = np.full(n, NO_NEIGHBOUR, dtype=np.int64)
    out = np.empty((depth, n), dtype=np.int64)
    rows = np.arange(n)
    if exact is not None:  # see the module docstring
        weight_exact = exact.float_exact(weights.T).T | ~votes
        tolerance = NEAR_TIE * np.cumsum(np.abs(weights), axis=0) + 1e-300
        class_exact = np.ones((n, num_classes + 1), dtype=bool)  # float sum == exact sum
        max_exact = np.ones(n, dtype=bool)  # running maximum == exact running maximum
        near = np.zeros(n, dtype=bool)
    for j in range(depth):
        column, weight = columns[j], weights[j]
        before = sums[rows, column]
        value = before + weight
        sums[rows, column] = value
        if exact is not None:
            with np.errstate(invalid="ignore"):  # inf - inf once a sum overflows: inexact
                back = value - before  # TwoSum: the addition was exact iff its error is 0
                value_exact = class_exact[rows, column] & weight_exact[j] & (
                    (before - (value - back)) + (weight - back) == 0)
                class_exact[rows, column] = value_exact
                near |= votes[j] & ~(value_exact & max_exact) & (np.abs(value - running_max) <= tolerance[j])
        better = votes[j] & (value > running_max)
        running_max = np.where(better, value, running_max)
        prediction = np.where(better, column, prediction)
        if exact is not None:
            max_exact = np.where(better, value_exact, max_exact)
        out[j] = prediction
    out = out.T.copy()
    if exact is not None:
        for row in np.flatnonzero(near).tolist():
            exact_row = exact.row_numerators(row)
            if exact_row is not None:
                out[row] = _exact_row(labels[row].tolist(), exact_row[0])
    return out


def class_scores(labels: np.ndarray, weights: np.ndarray, num_classes: int,
                 exact: ExactWeights | None = None) -> np.ndarray:
    """(n, K) label codes and weights -> (n, num_classes) summed votes. With ``exact``
    (plurality/rank), each sum is the exact one correctly rounded to float64."""
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.zeros((labels.shape[0], num_classes + 1))
    np.add.at(scores, (np.arange(labels.shape[0])[:, None], np.where(labels >= 0, labels, num_classes)),
              np.where(labels >= 0, weights, 0.0))
    if exact is not None:
        _check_exact(exact, labels)
        for row in range(labels.shape[0]):
            exact_row = exact.row_numerators(row)
            if exact_row is None:
                continue
            numerators, denominator = exact_row
            totals: dict[int, int] = {}
            for label, weight in zip(labels[row].tolist(), numerators):
                if label >= 0:
                    totals[label] = totals.get(label, 0) + weight
            for label, total in totals.items():
                scores[row, label] = total / denominator  # int / int: correctly rounded
    return scores[:, :num_classes]


def encode_labels(labels: np.ndarray, vocabulary: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """String labels (None for a missing neighbour) -> int codes and the vocabulary."""
    flat = [l for l in np.asarray(labels, dtype=object).reshape(-1).tolist() if l is not None]
    vocabulary = list(vocabulary) if vocabulary is not None else sorted(set(flat))
    index = {label: code for code, label in enumerate(vocabulary)}
    codes = np.array([index.get(l, NO_NEIGHBOUR) if l is not None else NO_NEIGHBOUR
                      for l in np.asarray(labels, dtype=object).reshape(-1).tolist()], dtype=np.int64)
    return codes.reshape(np.shape(labels)), vocabulary
