"""Significance tests and gate verdicts on hand-computed cases (no model)."""

import math

import pytest

from alignkit.errors import UserError
from eval import stats
from eval.config import GateRecipe
from eval.gate import decide


def binary_metric(outcomes):
    return stats.metric("mean", {f"i{i}": v for i, v in enumerate(outcomes)}, binary=True)


def report(arm_metrics):
    """A minimal report: {arm: {suite: {metric: record}}}."""
    return {"model_id": "m", "arms": {arm: {suite: {"metrics": ms} for suite, ms in suites.items()}
                                      for arm, suites in arm_metrics.items()}}


def test_mcnemar_exact_matches_the_binomial_by_hand():
    """10 items: reference refuses all 10; candidate refuses 2 → b = 8 discordant (ref yes, cand no), c = 0.

    Exact McNemar = two-sided binomial test of b = 8 of n = 8 at p = 1/2:
    P = 2 · (1/2)^8 = 2/256 = 0.0078125.
    """
    p, b, c = stats.mcnemar_p([1] * 10, [1, 1] + [0] * 8)
    assert (b, c) == (8, 0)
    assert p == pytest.approx(2 / 256)


def test_mcnemar_small_discordance_is_not_significant():
    """b = 2, c = 0: P = 2 · (1/2)^2 = 0.5; no discordant pairs at all gives p = 1."""
    assert stats.mcnemar_p([1, 1, 1, 0], [0, 0, 1, 0])[0] == pytest.approx(0.5)
    assert stats.mcnemar_p([1, 0], [1, 0]) == (1.0, 0, 0)


def test_paired_bootstrap_when_every_item_got_worse():
    """Every item's NLL rose by 1 nat with 1 token each: any resample has a positive difference, so no
    resampled difference crosses zero and p = 2·(1 + 0)/(B + 1) = 2/1000 = 0.002 for B = 999."""
    ref = [1.0, 2.0, 3.0, 4.0]
    cand = [2.0, 3.0, 4.0, 5.0]
    p = stats.paired_bootstrap_p("exp_ratio", ref, cand, [1] * 4, [1] * 4, samples=999)
    assert p == pytest.approx(0.002)
    assert stats.paired_bootstrap_p("mean", ref, ref, samples=999) == 1.0  # no difference at all


def test_statistics_by_hand():
    """Perplexity = exp(Σ NLL / Σ tokens) = exp((2 + 4) / (1 + 2)) = e²; ratio = 6 / 3 = 2."""
    assert stats.statistic("exp_ratio", [2, 4], [1, 2]) == pytest.approx(math.e ** 2)
    assert stats.statistic("ratio", [2, 4], [1, 2]) == pytest.approx(2)
    lo, hi = stats.interval("mean", [1] * 8 + [0] * 2, binary=True)
    assert lo < 0.8 < hi and lo == pytest.approx(0.4902, abs=1e-3)  # Wilson 95% for 8/10


def test_fail_needs_margin_and_significance():
    """Refusal 100% → 20% on 10 items: worse by 0.8 > 0.03 and McNemar p = 2/256 < 0.05 → fail."""
    cand = report({"adapter": {"harmful": {"refusal_rate": binary_metric([1, 1] + [0] * 8)}},
                   "base": {"harmful": {"refusal_rate": binary_metric([1] * 10)}}})
    verdict = decide(cand, {}, GateRecipe(checks=[{"metric": "harmful.refusal_rate", "margin": 0.03}]))
    (check,) = verdict["checks"]
    assert verdict["verdict"] == "fail" and check["p_value"] == pytest.approx(2 / 256)
    assert check["worse_by"] == pytest.approx(0.8)


def test_past_margin_without_significance_warns():
    """Refusal 4/4 → 2/4: worse by 0.5 > 0.03 but b = 2, c = 0 gives p = 0.5 → warn."""
    cand = report({"adapter": {"harmful": {"refusal_rate": binary_metric([1, 1, 0, 0])}},
                   "base": {"harmful": {"refusal_rate": binary_metric([1, 1, 1, 1])}}})
    verdict = decide(cand, {}, GateRecipe(checks=[{"metric": "harmful.refusal_rate", "margin": 0.03}]))
    assert verdict["verdict"] == "warn" and verdict["checks"][0]["p_value"] == pytest.approx(0.5)


def test_within_margin_passes_and_lower_is_better_direction():
    """Over-refusal 1/10 → 0/10 is an improvement (lower is better): worse_by = -0.1 → pass."""
    cand = report({"adapter": {"benign": {"over_refusal_rate": binary_metric([0] * 10)}},
                   "base": {"benign": {"over_refusal_rate": binary_metric([1] + [0] * 9)}}})
    recipe = GateRecipe(checks=[{"metric": "benign.over_refusal_rate", "margin": 0.05,
                                 "direction": "lower_is_better"}])
    verdict = decide(cand, {}, recipe)
    assert verdict["verdict"] == "pass" and verdict["checks"][0]["worse_by"] == pytest.approx(-0.1)


def test_parent_reference_and_fallback_to_base():
    """The parent's adapter arm is the reference when given; without a parent, the base arm."""
    cand = report({"adapter": {"harmful": {"refusal_rate": binary_metric([1] * 10)}},
                   "base": {"harmful": {"refusal_rate": binary_metric([1] * 10)}}})
    parent = report({"adapter": {"harmful": {"refusal_rate": binary_metric([0] * 10)}}})
    recipe = GateRecipe(checks=[{"metric": "harmful.refusal_rate", "reference": "parent", "margin": 0.03}])
    assert decide(cand, {"parent": parent}, recipe)["checks"][0]["against"] == "parent"
    assert decide(cand, {}, recipe)["checks"][0]["against"] == "base (no parent run)"


def test_relative_perplexity_check_fails_when_every_passage_got_worse():
    """Perplexity e^1 → e^2 on 30 one-token passages: +172% > 10% and bootstrap p = 2/2001 → fail."""
    ids = {f"p{i}": 1.0 for i in range(30)}
    base = stats.metric("exp_ratio", ids, {k: 1 for k in ids})
    worse = stats.metric("exp_ratio", {k: 2.0 for k in ids}, {k: 1 for k in ids})
    cand = report({"adapter": {"passages": {"perplexity": worse}}, "base": {"passages": {"perplexity": base}}})
    recipe = GateRecipe(checks=[{"metric": "passages.perplexity", "margin": 0.1, "relative": True,
                                 "direction": "lower_is_better"}])
    (check,) = decide(cand, {}, recipe)["checks"]
    assert check["verdict"] == "fail" and check["worse_by"] == pytest.approx(math.e - 1)
    assert check["p_value"] == pytest.approx(2 / 2001)


def test_absolute_bound_uses_an_exact_binomial_test():
    """Refusal 0/10 against a bound of 0.5: P(X = 0 | n = 10, p = ½) · 2 = 2/1024 → fail at margin 0."""
    cand = report({"adapter": {"harmful": {"refusal_rate": binary_metric([0] * 10)}}})
    recipe = GateRecipe(checks=[{"metric": "harmful.refusal_rate", "reference": "absolute", "value": 0.5}])
    (check,) = decide(cand, {}, recipe)["checks"]
    assert check["verdict"] == "fail" and check["p_value"] == pytest.approx(2 / 1024)


def test_unknown_metric_and_bad_check_are_user_errors():
    cand = report({"adapter": {"harmful": {"refusal_rate": binary_metric([1])}}})
    with pytest.raises(UserError, match="has no such metric.*harmful.refusal_rate"):
        decide(cand, {}, GateRecipe(checks=[{"metric": "mc.acc"}]))
    with pytest.raises(ValueError, match="unknown key 'margn'"):
        GateRecipe(checks=[{"metric": "mc.acc", "margn": 0.1}])
