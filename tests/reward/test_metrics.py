"""Reward-model metrics and the gate's binomial test, against numbers worked out by hand."""

import math

import pytest

from reward import metrics


def test_binomial_p_greater_by_hand():
    """P(X >= 4 | n=5, p=.5) = (C(5,4) + C(5,5)) / 2^5 = (5 + 1) / 32 = 0.1875.
    P(X >= 0) = 1; P(X >= 5 | n=5) = 1/32; P(X >= 23 | n=35) = sum_{i>=23} C(35,i) / 2^35 ≈ 0.0448."""
    assert metrics.binomial_p_greater(4, 5) == pytest.approx(0.1875)
    assert metrics.binomial_p_greater(0, 5) == pytest.approx(1.0)
    assert metrics.binomial_p_greater(5, 5) == pytest.approx(1 / 32)
    expected = sum(math.comb(35, i) for i in range(23, 36)) / 2 ** 35
    assert metrics.binomial_p_greater(23, 35) == pytest.approx(expected)
    assert 0.04 < expected < 0.05 and metrics.binomial_p_greater(22, 35) > 0.05


def test_binomial_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for k, n in [(7, 10), (23, 35), (60, 100)]:
        assert metrics.binomial_p_greater(k, n) == pytest.approx(
            scipy_stats.binomtest(k, n, 0.5, alternative="greater").pvalue)


def test_min_pairs_for_significance():
    """0.5^5 = 0.03125 < 0.05 but 0.5^4 = 0.0625 is not: 5 pairs is the floor at alpha 0.05; 0.5^7 < 0.01 <= 0.5^6."""
    assert metrics.min_pairs_for_significance(0.05) == 5
    assert metrics.min_pairs_for_significance(0.01) == 7


def test_pairwise_stats_and_calibration_by_hand():
    """margins = chosen - rejected = [2, -1, 0.5, 0 (tie), 3, -0.2]; correct = 3 (2, 0.5, 3; the tie is wrong).
    accuracy 3/6 = 0.5; mean margin = (2 - 1 + 0.5 + 0 + 3 - 0.2) / 6 = 4.3 / 6.
    Sorted by |m|: [0, -0.2, 0.5, -1, 2, 3] → 2 buckets of 3: [0, -0.2, 0.5] accuracy 1/3, [-1, 2, 3] accuracy 2/3.
    expected of bucket 1 = (σ(0) + σ(0.2) + σ(0.5)) / 3 = (0.5 + 0.549834 + 0.622459) / 3 = 0.557431."""
    stats = metrics.pairwise_stats([3, 0, 1.5, 1, 4, 0.8], [1, 1, 1, 1, 1, 1], buckets=2)
    assert (stats["n"], stats["correct"], stats["accuracy"]) == (6, 3, 0.5)
    assert stats["mean_margin"] == pytest.approx(4.3 / 6)
    low, high = stats["calibration"]
    assert (low["n"], low["accuracy"], low["abs_margin_min"], low["abs_margin_max"]) == (3, round(1 / 3, 4), 0, 0.5)
    assert (high["n"], high["accuracy"], high["abs_margin_max"]) == (3, round(2 / 3, 4), 3)
    assert low["expected"] == pytest.approx(0.557431, abs=1e-4)


def test_gate_passes_only_when_significant():
    """23/35 right: p ≈ 0.0448 < 0.05 → pass; 22/35 (62.9%, above 0.5) has p ≈ 0.0877 → fail."""
    passing = metrics.gate({"n": 35, "correct": 23, "accuracy": 23 / 35})
    failing = metrics.gate({"n": 35, "correct": 22, "accuracy": 22 / 35})
    assert passing["passed"] and passing["verdict"] == "pass" and passing["p_value"] < 0.05
    assert not failing["passed"] and failing["verdict"] == "fail" and "p = 0.0877" in failing["reason"]
    assert not metrics.gate({"n": 0, "correct": 0, "accuracy": 0.0})["passed"]


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        metrics.pairwise_stats([1.0], [1.0, 2.0])
