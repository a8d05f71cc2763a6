"""Aggregators against hand-computed cases from method.md section 2."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from serving.aggregation import (Aggregator, ExactWeights, class_scores, encode_labels,
                                 predict_every_k)


def votes(labels, method="plurality", distances=None, num_classes=5, parameter=None):
    labels = np.array([labels])
    distances = np.zeros(labels.shape) if distances is None else np.array([distances])
    weights = Aggregator(method, parameter).weights(distances)
    return predict_every_k(labels, weights, num_classes)[0].tolist()


def test_first_to_reach_the_maximum_wins_ties():
    assert votes([0, 1]) == [0, 0]
    assert votes([2, 3, 3, 1, 1]) == [2, 2, 3, 3, 3]
    assert votes([1, 2, 2, 1]) == [1, 1, 2, 2]  # method.md: [1,2,2,1] -> 2


def test_class_zero_is_an_ordinary_class():
    """The reference code treats class id 0 as 'no prediction'; we do not."""
    assert votes([0, 0, 1]) == [0, 0, 0]


def test_rank_weights_are_harmonic_from_one_half():
    weights = Aggregator("rank").weights(np.zeros((1, 5)))[0]
    assert weights.tolist() == pytest.approx([1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6])
    # Rank voting: the nearest neighbour (0.5) beats the next two of another class (1/3+1/4 > 0.5).
    assert votes([4, 1, 1], method="rank") == [4, 4, 1]


def test_softmax_and_distance_weights():
    distances = np.array([[0.1, 0.3]])
    assert Aggregator("softmax").weights(distances)[0] == pytest.approx(np.exp(np.array([0.9, 0.7]) / 0.07))
    assert Aggregator("distance", 2.0).weights(distances)[0] == pytest.approx(np.exp(-distances[0]) ** 2)
    # Softmax with tau=0.07 trusts the close neighbour far more than plurality does.
    assert votes([3, 1, 1], "softmax", [0.05, 0.3, 0.3]) == [3, 3, 3]
    assert votes([3, 1, 1], "plurality", [0.05, 0.3, 0.3]) == [3, 3, 1]


def test_item_weights_multiply_votes():
    weights = Aggregator("plurality").weights(np.zeros((1, 3)), item_weights=np.array([[0.1, 1, 1]]))
    assert predict_every_k(np.array([[2, 1, 1]]), weights, 3)[0].tolist() == [2, 1, 1]  # 1 > 0.1


def test_missing_neighbours_do_not_vote():
    assert votes([-1, 2, -1]) == [-1, 2, 2]
    scores = class_scores(np.array([[1, -1, 1]]), np.ones((1, 3)), 3)
    assert scores.tolist() == [[0, 2, 0]]


def test_invalid_parameters_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        Aggregator("rank", 0.0)
    with pytest.raises(ValueError, match="aggregator must be"):
        Aggregator("median")


def test_encode_labels_keeps_order_and_marks_missing():
    codes, vocabulary = encode_labels(np.array([["b", "a", None]], dtype=object))
    assert vocabulary == ["a", "b"] and codes.tolist() == [[1, 0, -1]]


# --- exact votes (module docstring of serving/aggregation.py) ---------------------------------

def exact_votes(labels, method="rank", parameter=None, item_weights=None, num_classes=3):
    """(float-only predictions, exact predictions) for one query."""
    labels = np.array([labels])
    distances = np.zeros(labels.shape)
    items = None if item_weights is None else np.array([item_weights], dtype=np.float64)
    aggregator = Aggregator(method, parameter)
    weights = aggregator.weights(distances, items)
    exact = aggregator.exact_weights(distances, items)
    return (predict_every_k(labels, weights, num_classes)[0].tolist(),
            predict_every_k(labels, weights, num_classes, exact=exact)[0].tolist())


def reference_every_k(labels: np.ndarray, method: str, alpha: float, items: np.ndarray | None) -> np.ndarray:
    """method.md section 2 in pure Fractions: weights, sums and the running maximum all exact."""
    out = []
    for i, row in enumerate(labels.tolist()):
        sums, best, prediction, predictions = {}, None, -1, []
        for r, label in enumerate(row):
            if label >= 0:
                weight = Fraction(1) if method == "plurality" else 1 / (r + Fraction(alpha))
                if items is not None:
                    weight *= Fraction(float(items[i, r]))
                sums[label] = sums.get(label, 0) + weight
                if best is None or sums[label] > best:
                    best, prediction = sums[label], label
            predictions.append(prediction)
        out.append(predictions)
    return np.array(out, dtype=np.int64).reshape(labels.shape)


def test_exact_tie_that_float_sums_break():
    """Rank voting, alpha = 2: class 0 gets 1/2 + 1/12, class 1 gets 1/3 + 1/4, both 7/12.
    Class 1 reached 7/12 first, so it keeps the prediction; float64 makes class 0 larger."""
    labels = [0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0]
    assert 1 / 2 + 1 / 12 > 1 / 3 + 1 / 4  # the float64 artefact this guards against
    float_only, exact = exact_votes(labels, num_classes=9)
    assert float_only[-1] == 0
    assert exact == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]


def test_exact_tie_found_by_search_three_classes():
    """Found by a seeded search over random 3-class label sequences (numpy default_rng(0), rank
    voting, alpha = 2, float predict_every_k against a Fraction reference). At k = 14 class 0
    has 1/2 + 1/5 + 1/12 + 1/15 and class 2 has 1/3 + 1/4 + 1/6 + 1/10: both 51/60, class 2
    got there first (k = 9). Float64 sums put class 0 ahead."""
    labels = [0, 2, 2, 0, 2, 1, 1, 1, 2, 1, 0, 1, 1, 0]
    float_only, exact = exact_votes(labels)
    assert float_only == [0, 0, 2, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0]
    assert exact == [0, 0, 2, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    assert exact == reference_every_k(np.array([labels]), "rank", 2.0, None)[0].tolist()


def test_exact_tie_of_item_weights():
    """Plurality with soft-pruning weights: 0.3 + 0.2 + 0.1 and 0.1 + 0.2 + 0.3 are the same
    rational (every float is one), but float64 sums them to 0.6 and 0.6000000000000001."""
    labels, items = [1, 1, 1, 0, 0, 0], [0.3, 0.2, 0.1, 0.1, 0.2, 0.3]
    float_only, exact = exact_votes(labels, "plurality", item_weights=items, num_classes=2)
    assert float_only[-1] == 0
    assert exact == [1, 1, 1, 1, 1, 1]


def test_item_weights_are_read_exactly_not_rounded():
    """1 + 2^-52 is just above 1: the class holding it must lead, and a tie made of
    1 and 2^-53 + 2^-53 (float64 sum: 1.0) must not hide that."""
    tiny = 2.0 ** -53
    labels, items = [0, 1, 1, 1], [1 + 2 * tiny, 1.0, tiny, tiny]
    _, exact = exact_votes(labels, "plurality", item_weights=items, num_classes=2)
    assert exact == reference_every_k(np.array([labels]), "plurality", 0.0, np.array([items]))[0].tolist()
    assert exact == [0, 0, 0, 0]  # class 1 reaches exactly 1 + 2^-52 at k = 4: a tie, 0 was first
    _, exact = exact_votes([0, 1, 1, 1, 1], "plurality", item_weights=items + [tiny], num_classes=2)
    assert exact[-1] == 1  # now 1 + 3 * 2^-53 > 1 + 2^-52, though float64 sums both to 1 + 2^-52


@pytest.mark.parametrize("method", ["plurality", "rank"])
@pytest.mark.parametrize("pool", [None, "tie-prone", "uniform"])
def test_every_k_equals_a_fraction_reference(method, pool):
    rng = np.random.default_rng(7)
    pools = {"tie-prone": [1.0, 1.0, 0.5, 0.25, 0.1, 0.2, 0.3, 0.6, 0.0, 2.0 ** -53]}
    for trial in range(30):
        alpha = float(rng.choice([2.0, 0.1, 0.5, 1.0, 1.5, 3.7]))
        n, depth, num_classes = 40, int(rng.integers(1, 30)), int(rng.integers(1, 4))
        labels = rng.integers(-1 if trial % 3 == 0 else 0, num_classes, size=(n, depth))
        items = (None if pool is None else rng.random((n, depth)) if pool == "uniform"
                 else rng.choice(pools[pool], size=(n, depth)))
        aggregator = Aggregator(method, alpha if method == "rank" else None)
        distances = rng.random((n, depth))
        weights = aggregator.weights(distances, items)
        exact = aggregator.exact_weights(distances, items)
        expected = reference_every_k(labels, method, alpha, items)
        assert predict_every_k(labels, weights, num_classes, exact=exact).tolist() == expected.tolist()
        # the callers' masked form (evaluate.py zeroes the weights of missing neighbours)
        masked = np.where(labels >= 0, weights, 0.0)
        assert predict_every_k(labels, masked, num_classes, exact=exact).tolist() == expected.tolist()


def test_exact_weights_are_the_weights_as_fractions():
    items = np.array([[0.1, 1.0, 0.7], [1.0, 0.0, 0.3]], dtype=np.float32)
    exact = Aggregator("rank", 1.5).exact_weights(np.zeros((2, 3)), items)
    assert isinstance(exact, ExactWeights)
    assert exact.row_fractions(1) == [1 / (r + Fraction(1.5)) * Fraction(float(x))
                                      for r, x in enumerate(items[1].tolist())]
    numerators, denominator = exact.row_numerators(0)
    assert [Fraction(a, denominator) for a in numerators] == exact.row_fractions(0)
    assert Aggregator("plurality").exact_weights(np.zeros((1, 4))).row_fractions(0) == [1, 1, 1, 1]
    assert Aggregator("distance").exact_weights(np.zeros((1, 4))) is None
    assert Aggregator("softmax").exact_weights(np.zeros((1, 4))) is None


def test_exact_class_scores_show_ties_as_ties():
    labels = np.array([[0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0]])
    aggregator = Aggregator("rank")
    weights = aggregator.weights(np.zeros(labels.shape))
    scores = class_scores(labels, weights, 9, exact=aggregator.exact_weights(np.zeros(labels.shape)))
    assert scores[0, 0] == scores[0, 1] == float(Fraction(7, 12))
    assert scores[0, 2:].tolist() == [float(1 / Fraction(r + 2)) for r in range(3, 10)]


def test_exact_weights_must_match_the_labels():
    exact = Aggregator("rank").exact_weights(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="shape"):
        predict_every_k(np.zeros((1, 3), dtype=np.int64), np.ones((1, 3)), 2, exact=exact)


def test_non_finite_item_weights_keep_the_float_result():
    labels = np.array([[0, 1, 1]])
    items = np.array([[1.0, np.nan, 0.5]])
    aggregator = Aggregator("plurality")
    weights = np.nan_to_num(aggregator.weights(np.zeros(labels.shape), items))
    exact = aggregator.exact_weights(np.zeros(labels.shape), items)
    assert predict_every_k(labels, weights, 2, exact=exact).tolist() == predict_every_k(labels, weights, 2).tolist()


@pytest.mark.parametrize("method", ["plurality", "rank", "softmax"])
def test_row_by_row_path_equals_the_vectorised_pass(method):
    """Up to SMALL_BATCH rows predict_every_k runs per row in Python; more rows take the
    vectorised pass. Both give the same predictions at every k (seeded, with ties likely)."""
    from serving.aggregation import SMALL_BATCH

    rng = np.random.default_rng(7)
    rows = SMALL_BATCH * 3
    labels = rng.integers(-1, 4, size=(rows, 60))
    distances = rng.choice([0.1, 0.2, 0.25], size=labels.shape)
    items = rng.choice([1.0, 0.5, 0.25, 0.3], size=labels.shape)
    aggregator = Aggregator(method)
    weights = aggregator.weights(distances, items)
    exact = aggregator.exact_weights(distances, items)
    together = predict_every_k(labels, weights, 4, exact=exact)
    for row in range(rows):
        one = aggregator.exact_weights(distances[row:row + 1], items[row:row + 1])
        alone = predict_every_k(labels[row:row + 1], weights[row:row + 1], 4, exact=one)
        assert alone.tolist() == together[row:row + 1].tolist()
