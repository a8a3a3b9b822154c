"""memoe.metrics: label matching, accuracy, adjusted Rand index, confusion table."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import ArgumentError, ArgumentTypeError, MemoeError
from memoe.metrics import accuracy, adjusted_rand, confusion, match_labels


def ari_pairs(a, b) -> float:
    """scikit-learn's adjusted_rand_score written from its pair-confusion formula, by enumerating pairs.

    ARI = 2 (tp tn - fn fp) / ((tp + fn)(fn + tn) + (tp + fp)(fp + tn)), 1 when fn = fp = 0
    (sklearn.metrics.cluster._supervised.adjusted_rand_score); independent of the contingency-table route.
    """
    tp = fp = fn = tn = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        same_a, same_b = a[i] == a[j], b[i] == b[j]
        tp += same_a and same_b
        fn += same_a and not same_b
        fp += same_b and not same_a
        tn += not same_a and not same_b
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 1, 1], [0, 0, 1, 1], 1.0),
        ([0, 0, 1, 1], [1, 1, 0, 0], 1.0),  # relabelling changes nothing
        ([0, 0, 1, 2], [0, 0, 1, 1], 4.0 / 7.0),  # sklearn's documented 0.57...
        ([0, 0, 1, 1], [0, 1, 0, 1], -0.5),  # sklearn's documented -0.5
        ([0, 0, 0, 0], [0, 1, 2, 3], 0.0),  # one class against singletons
        ([0, 0, 0, 0], [1, 1, 1, 1], 1.0),  # both trivial
        ([0, 1, 2, 3], [3, 2, 1, 0], 1.0),  # both all singletons
    ],
)
def test_adjusted_rand_hand_computed_cases(a, b, expected):
    assert adjusted_rand(a, b) == pytest.approx(expected, abs=1e-12)
    assert ari_pairs(a, b) == pytest.approx(expected, abs=1e-12)


def test_adjusted_rand_matches_the_pair_counting_formula_on_random_labelings():
    rng = np.random.default_rng(0)
    for n, ka, kb in [(30, 2, 3), (25, 4, 4), (40, 3, 2), (12, 5, 1)]:
        a, b = rng.integers(0, ka, n), rng.integers(0, kb, n)
        # both routes are sums of at most C(40, 2) = 780 integers: equal to rounding
        assert adjusted_rand(a, b) == pytest.approx(ari_pairs(a, b), abs=1e-12)
        assert adjusted_rand(a, b) == pytest.approx(adjusted_rand(b, a), abs=1e-15)  # symmetric


def test_match_labels_finds_the_best_assignment_not_the_greedy_one():
    # estimated 1 overlaps most with true "a" (3), but the optimum gives "a" to estimated 2 (3 + 3 > 3 + 2)
    est = [1, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    tru = ["a", "a", "a", "b", "a", "a", "a", "b", "b", "c"]
    m = match_labels(est, tru)
    best = max(
        sum(dict(zip([1, 2, 3], p, strict=True))[e] == t for e, t in zip(est, tru, strict=True))
        for p in itertools.permutations(["a", "b", "c"])
    )
    assert m.accuracy == pytest.approx(best / len(est))
    assert accuracy(est, tru) == m.accuracy
    assert list(m.labels) == [m.mapping[e] for e in est]
    assert m.order is None  # string truth: no expert order


def test_match_labels_more_estimated_than_true_classes():
    m = match_labels([1, 1, 2, 2, 3], [1, 1, 2, 2, 2])
    assert m.mapping[3] is None and m.accuracy == pytest.approx(0.8)


def test_confusion_has_the_correct_subjects_on_the_diagonal():
    tab = confusion([2, 2, 2, 1, 1, 3], [1, 1, 2, 2, 2, 3])
    assert list(tab.index) == [1, 2, 3]
    assert np.trace(tab.to_numpy()) == 5 and tab.to_numpy().sum() == 6
    assert list(tab.columns) == ["2 (= 1)", "1 (= 2)", "3 (= 3)"]
    raw = confusion([2, 2, 2, 1, 1, 3], [1, 1, 2, 2, 2, 3], matched=False)
    assert list(raw.columns) == [1, 2, 3] and raw.to_numpy().sum() == 6


def test_metrics_take_a_fit_with_per_row_or_per_subject_truth(sim2_fit, sim2):
    truth_rows = sim2["true_class"]
    truth_subj = sim2.groupby("id")["true_class"].first()
    m_rows = match_labels(sim2_fit, truth_rows)
    m_subj = match_labels(sim2_fit, truth_subj)
    m_arr = match_labels(sim2_fit, truth_subj.to_numpy())
    assert m_rows.accuracy == m_subj.accuracy == m_arr.accuracy
    # the flexmix reference accuracy of this fit (tests/data/memoe_sim2): 0.91
    assert m_rows.accuracy == pytest.approx(0.91, abs=1e-12)
    assert sorted(m_rows.order.tolist()) == [0, 1]
    relabelled = sim2_fit.estimates.permute(m_rows.order)
    # after relabelling, expert j's intercept is the true class j's (10 and 12 in memoe_sim2)
    assert abs(relabelled.beta[0, 0] - 10) < 1 and abs(relabelled.beta[1, 0] - 12) < 1
    assert adjusted_rand(sim2_fit, truth_rows) == pytest.approx(
        adjusted_rand(sim2_fit.classify().to_numpy(), truth_subj.to_numpy()), abs=1e-15
    )
    tab = confusion(sim2_fit, truth_rows)
    assert tab.to_numpy().sum() == 300 and np.trace(tab.to_numpy()) == 273


def test_fit_order_when_experts_are_swapped(sim2_fit, sim2):
    truth = sim2.groupby("id")["true_class"].first().to_numpy()
    swapped = 3 - truth  # class 1 <-> 2
    m = match_labels(sim2_fit, swapped)
    assert m.accuracy == pytest.approx(0.91)
    assert m.order.tolist() == match_labels(sim2_fit, truth).order[::-1].tolist()


def test_metrics_refuse_bad_input(sim2_fit, sim2):
    with pytest.raises(ArgumentError, match="different lengths"):
        accuracy([1, 2, 1], [1, 2])
    with pytest.raises(ArgumentError, match="missing"):
        accuracy([1, 2, np.nan], [1, 2, 1])
    with pytest.raises(ArgumentTypeError, match="one-dimensional"):
        adjusted_rand(np.zeros((3, 2)), [1, 2, 3])
    with pytest.raises(ArgumentTypeError, match="DataFrame"):
        accuracy(pd.DataFrame({"a": [1, 2]}), [1, 2])
    with pytest.raises(ArgumentError, match="truth has 7 labels"):
        match_labels(sim2_fit, [1] * 7)
    bad = sim2["true_class"].copy()
    bad.iloc[1] = 3 - bad.iloc[0]  # subject 1's rows disagree
    with pytest.raises(ArgumentError, match="varies within subject"):
        match_labels(sim2_fit, bad)
    assert issubclass(ArgumentError, MemoeError)


def test_metrics_is_exported():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert memoe.metrics.adjusted_rand is adjusted_rand
