"""Statistics of per-item outcomes: metric values, 95% intervals and paired significance tests. Pure.

A metric in a report keeps its per-item outcomes (`outcomes`: id → value, and for ratio statistics
`weights`: id → weight), so every number here can be recomputed from report.json alone:

  stat "mean"       value = mean(x)                 refusal rate, accuracy (x ∈ {0, 1}), ROUGE
  stat "ratio"      value = Σx / Σw                 mean per-token KL (x = summed KL, w = tokens)
  stat "exp_ratio"  value = exp(Σx / Σw)            perplexity (x = summed NLL, w = tokens)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

BOOTSTRAP_SAMPLES = 2000


def statistic(stat: str, xs: Sequence[float], ws: Sequence[float] | None = None) -> float:
    """The metric value of per-item outcomes `xs` (with weights `ws` for ratio statistics)."""
    xs = np.asarray(xs, dtype=float)
    if stat == "mean":
        return float(xs.mean()) if len(xs) else float("nan")
    ws = np.asarray(ws, dtype=float)
    ratio = float(xs.sum() / ws.sum()) if ws.sum() > 0 else float("nan")
    if stat == "ratio":
        return ratio
    if stat == "exp_ratio":
        return float(math.exp(ratio)) if math.isfinite(ratio) else float("nan")
    raise ValueError(f"unknown statistic {stat!r}")


def _resampled(stat: str, xs: np.ndarray, ws: np.ndarray | None, idx: np.ndarray) -> np.ndarray:
    """The statistic on every row of bootstrap indices `idx` (samples × items)."""
    if stat == "mean":
        return xs[idx].mean(axis=1)
    ratio = xs[idx].sum(axis=1) / ws[idx].sum(axis=1)
    return np.exp(ratio) if stat == "exp_ratio" else ratio


def interval(stat: str, xs: Sequence[float], ws: Sequence[float] | None = None, binary: bool = False,
             samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% interval: Wilson for a yes/no rate, percentile bootstrap otherwise."""
    n = len(xs)
    if n == 0:
        return (float("nan"), float("nan"))
    if binary and stat == "mean":
        from statsmodels.stats.proportion import proportion_confint

        lo, hi = proportion_confint(int(round(sum(xs))), n, alpha=0.05, method="wilson")
        return (float(lo), float(hi))
    x = np.asarray(xs, dtype=float)
    w = np.asarray(ws, dtype=float) if ws is not None else None
    idx = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    values = _resampled(stat, x, w, idx)
    return (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))


def mcnemar_p(reference: Sequence[int], candidate: Sequence[int]) -> tuple[float, int, int]:
    """Exact (binomial) McNemar p-value of paired yes/no outcomes; returns (p, b, c).

    b = items yes under the reference and no under the candidate, c = the reverse; only these
    discordant pairs carry information, and under "no difference" b ~ Binomial(b + c, 1/2).
    """
    from statsmodels.stats.contingency_tables import mcnemar

    pairs = list(zip((int(r) for r in reference), (int(c) for c in candidate)))
    a = sum(1 for r, c in pairs if r and c)
    b = sum(1 for r, c in pairs if r and not c)
    c = sum(1 for r, c in pairs if not r and c)
    d = sum(1 for r, c in pairs if not r and not c)
    if b + c == 0:
        return 1.0, b, c
    return float(mcnemar([[a, b], [c, d]], exact=True).pvalue), b, c


def binomial_p(successes: int, n: int, bound: float) -> float:
    """Two-sided exact binomial p-value of a yes/no rate against a fixed bound."""
    from scipy.stats import binomtest

    if n == 0:
        return 1.0
    return float(binomtest(successes, n, min(max(bound, 0.0), 1.0)).pvalue)


def paired_bootstrap_p(stat: str, ref_x: Sequence[float], cand_x: Sequence[float],
                       ref_w: Sequence[float] | None = None, cand_w: Sequence[float] | None = None,
                       samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> float:
    """Two-sided paired bootstrap p-value of "candidate − reference = 0".

    Items are resampled together (the same indices for both arms); the p-value is twice the share
    of resampled differences on the far side of zero from the observed one, with the +1 correction:
    p = min(1, 2·(1 + #{d_b·sign(d) ≤ 0}) / (B + 1)). Differences that never cross zero give 2/(B+1).
    """
    rx, cx = np.asarray(ref_x, dtype=float), np.asarray(cand_x, dtype=float)
    rw = np.asarray(ref_w, dtype=float) if ref_w is not None else None
    cw = np.asarray(cand_w, dtype=float) if cand_w is not None else None
    observed = statistic(stat, cx, cw) - statistic(stat, rx, rw)
    if observed == 0 or not math.isfinite(observed) or len(rx) == 0:
        return 1.0
    idx = np.random.default_rng(seed).integers(0, len(rx), size=(samples, len(rx)))
    diffs = _resampled(stat, cx, cw, idx) - _resampled(stat, rx, rw, idx)
    crossing = int(np.sum(diffs * np.sign(observed) <= 0))
    return float(min(1.0, 2 * (1 + crossing) / (samples + 1)))


def bound_bootstrap_p(stat: str, xs: Sequence[float], ws: Sequence[float] | None, bound: float,
                      samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> float:
    """Two-sided bootstrap p-value of "the statistic equals `bound`" (an absolute gate check on scores)."""
    x = np.asarray(xs, dtype=float)
    w = np.asarray(ws, dtype=float) if ws is not None else None
    observed = statistic(stat, x, w) - bound
    if observed == 0 or len(x) == 0:
        return 1.0
    idx = np.random.default_rng(seed).integers(0, len(x), size=(samples, len(x)))
    crossing = int(np.sum((_resampled(stat, x, w, idx) - bound) * np.sign(observed) <= 0))
    return float(min(1.0, 2 * (1 + crossing) / (samples + 1)))


def metric(stat: str, outcomes: dict[str, float], weights: dict[str, float] | None = None,
           binary: bool = False, seed: int = 0) -> dict:
    """A report metric: value, 95% interval, n and the per-item outcomes it came from."""
    ids = list(outcomes)
    xs = [outcomes[i] for i in ids]
    ws = [weights[i] for i in ids] if weights is not None else None
    out = {"value": statistic(stat, xs, ws) if ids else float("nan"), "ci": list(interval(stat, xs, ws, binary,
           seed=seed)), "n": len(ids), "stat": stat, "binary": binary, "outcomes": outcomes}
    if weights is not None:
        out["weights"] = weights
    return out
