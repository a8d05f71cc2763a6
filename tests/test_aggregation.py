"""Aggregators against hand-computed cases from method.md section 2."""
from __future__ import annotations

import numpy as np
import pytest

from serving.aggregation import Aggregator, class_scores, encode_labels, predict_every_k


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
