"""Reward-model quality on held-out pairs: pairwise accuracy, margin, calibration, and the gate's binomial test.

Pure functions on lists of scores; the numbers in tests/reward/test_metrics.py are worked out by hand.
"""

from __future__ import annotations

import math
from typing import Sequence


def binomial_p_greater(k: int, n: int, p: float = 0.5) -> float:
    """One-sided exact binomial p-value P(X >= k) for X ~ Binomial(n, p)."""
    if n <= 0:
        return 1.0
    k = max(k, 0)
    return min(1.0, sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def min_pairs_for_significance(alpha: float) -> int:
    """The smallest n at which even n/n correct could pass the one-sided test at level alpha (0.5^n < alpha)."""
    n = 1
    while 0.5 ** n >= alpha:
        n += 1
    return n


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def calibration(margins: Sequence[float], buckets: int = 4) -> list[dict]:
    """Accuracy per |margin| bucket (equal-count buckets, smallest |margin| first).

    `expected` is the Bradley-Terry accuracy the model claims in that bucket, mean sigmoid(|margin|): a
    calibrated reward model's accuracy rises with |margin| and sits near `expected`.
    """
    ranked = sorted(margins, key=abs)
    n = len(ranked)
    if n == 0:
        return []
    buckets = max(1, min(buckets, n))
    out = []
    for b in range(buckets):
        chunk = ranked[b * n // buckets:(b + 1) * n // buckets]
        if not chunk:
            continue
        out.append({
            "abs_margin_min": round(abs(chunk[0]), 4),
            "abs_margin_max": round(abs(chunk[-1]), 4),
            "n": len(chunk),
            "accuracy": round(sum(m > 0 for m in chunk) / len(chunk), 4),
            "expected": round(sum(sigmoid(abs(m)) for m in chunk) / len(chunk), 4),
        })
    return out


def pairwise_stats(chosen: Sequence[float], rejected: Sequence[float], buckets: int = 4) -> dict:
    """Held-out pairwise accuracy (ties count as wrong), mean margin, calibration buckets and their error."""
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen scores but {len(rejected)} rejected scores")
    margins = [c - r for c, r in zip(chosen, rejected)]
    n = len(margins)
    correct = sum(m > 0 for m in margins)
    cal = calibration(margins, buckets)
    error = sum(b["n"] * abs(b["accuracy"] - b["expected"]) for b in cal) / n if n else 0.0
    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "mean_margin": sum(margins) / n if n else 0.0,
        "mean_chosen": sum(chosen) / n if n else 0.0,
        "mean_rejected": sum(rejected) / n if n else 0.0,
        "calibration": cal,
        "calibration_error": round(error, 4),
    }


def gate(stats: dict, alpha: float = 0.05) -> dict:
    """The reward-model gate: accuracy above 0.5 with a one-sided binomial p-value below alpha."""
    p_value = binomial_p_greater(stats["correct"], stats["n"])
    passed = stats["n"] > 0 and stats["accuracy"] > 0.5 and p_value < alpha
    reason = (f"held-out pairwise accuracy {stats['accuracy']:.3f} ({stats['correct']}/{stats['n']}), "
              f"one-sided binomial p = {p_value:.3g} {'<' if p_value < alpha else '>='} alpha {alpha}")
    return {"passed": passed, "verdict": "pass" if passed else "fail", "accuracy": stats["accuracy"],
            "n": stats["n"], "correct": stats["correct"], "p_value": p_value, "alpha": alpha,
            "test": "one-sided exact binomial, H0: accuracy = 0.5", "reason": reason}
