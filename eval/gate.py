"""Gates: a pure verdict from (candidate report, reference reports, gate recipe), and `alignkit gate`.

A check compares a candidate metric with the base arm, the parent run's adapter arm, or an absolute
bound. It **fails** only when the point estimate is past its margin *and* a paired test on the per-item
outcomes gives p < alpha (exact McNemar for yes/no outcomes, paired bootstrap for scores); past the
margin without significance it **warns**; otherwise it **passes**. The gate fails if any check fails.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from alignkit.errors import UserError
from eval import stats
from eval.config import Check, GateRecipe


def metric_of(report: dict, arm: str, dotted: str) -> dict | None:
    """The metric record `<suite>.<metric>` of one arm of a report, or None."""
    suite, _, name = dotted.partition(".")
    return report.get("arms", {}).get(arm, {}).get(suite, {}).get("metrics", {}).get(name)


def available_metrics(report: dict, arm: str) -> list[str]:
    """Every `<suite>.<metric>` an arm of a report has."""
    return sorted(f"{s}.{m}" for s, suite in report.get("arms", {}).get(arm, {}).items() for m in suite.get("metrics", {}))


def _reference(check: Check, candidate: dict, references: dict[str, dict]) -> tuple[dict | None, str]:
    """(metric record, description) the check compares against."""
    if check.reference == "parent" and references.get("parent") is not None:
        return metric_of(references["parent"], "adapter", check.metric), "parent"
    base = references.get("base") or candidate
    note = "base (no parent run)" if check.reference == "parent" else "base"
    return metric_of(base, "base", check.metric), note


def _worse_by(check: Check, cand: float, ref: float) -> float:
    """How far the candidate is on the bad side of the reference (in the margin's units)."""
    delta = cand - ref
    if check.relative:
        delta = delta / abs(ref) if ref else math.inf * (1 if delta > 0 else -1 if delta < 0 else 0)
    return -delta if check.direction == "higher_is_better" else delta


def _paired(check: Check, cand: dict, ref: dict, recipe: GateRecipe) -> tuple[float, str]:
    ids = [i for i in cand["outcomes"] if i in ref["outcomes"]]
    if not ids:
        raise UserError(f"gate check {check.metric}: candidate and reference share no items; were they "
                        "evaluated on the same suite?")
    binary = cand.get("binary") and ref.get("binary")
    test = check.test if check.test != "auto" else ("mcnemar" if binary else "bootstrap")
    if test == "mcnemar":
        if not binary:
            raise UserError(f"gate check {check.metric}: McNemar needs yes/no outcomes; use test: bootstrap")
        p, b, c = stats.mcnemar_p([ref["outcomes"][i] for i in ids], [cand["outcomes"][i] for i in ids])
        return p, f"McNemar exact, b={b} c={c}, n={len(ids)}"
    weights = "weights" in cand
    p = stats.paired_bootstrap_p(
        cand["stat"], [ref["outcomes"][i] for i in ids], [cand["outcomes"][i] for i in ids],
        [ref["weights"][i] for i in ids] if weights else None, [cand["weights"][i] for i in ids] if weights else None,
        samples=recipe.bootstrap_samples, seed=recipe.seed)
    return p, f"paired bootstrap B={recipe.bootstrap_samples}, n={len(ids)}"


def _absolute(check: Check, cand: dict, recipe: GateRecipe) -> tuple[float, str]:
    xs = list(cand["outcomes"].values())
    if cand.get("binary") and check.test != "bootstrap":
        return stats.binomial_p(int(round(sum(xs))), len(xs), check.value), f"exact binomial vs {check.value}, n={len(xs)}"
    ws = [cand["weights"][i] for i in cand["outcomes"]] if "weights" in cand else None
    return (stats.bound_bootstrap_p(cand["stat"], xs, ws, check.value, recipe.bootstrap_samples, recipe.seed),
            f"bootstrap vs {check.value}, n={len(xs)}")


def check_one(check: Check, candidate: dict, references: dict[str, dict], recipe: GateRecipe) -> dict:
    """The verdict of one check: pass | warn | fail, with the numbers and one reason."""
    cand = metric_of(candidate, check.arm, check.metric)
    if cand is None:
        have = ", ".join(available_metrics(candidate, check.arm)) or "none"
        raise UserError(f"gate check {check.metric}: the candidate report's '{check.arm}' arm has no such metric "
                        f"(it has: {have})")
    row: dict[str, Any] = {"metric": check.metric, "reference": check.reference, "margin": check.margin,
                           "relative": check.relative, "direction": check.direction, "candidate": cand["value"]}
    if check.reference == "absolute":
        ref_value, against = check.value, f"absolute {check.value}"
        p, test = _absolute(check, cand, recipe)
    else:
        ref, against = _reference(check, candidate, references)
        if ref is None:
            raise UserError(f"gate check {check.metric}: the {against} report has no such metric")
        ref_value = ref["value"]
        p, test = _paired(check, cand, ref, recipe)
    worse = _worse_by(check, cand["value"], ref_value)
    past = worse > check.margin + 1e-12
    verdict = "fail" if past and p < recipe.alpha else "warn" if past else "pass"
    unit = f"{check.margin:.0%}" if check.relative else f"{check.margin:g}"
    reason = (f"{check.metric} {cand['value']:.4g} vs {against} {ref_value:.4g}: worse by "
              f"{worse:+.4g}{' (relative)' if check.relative else ''}, margin {unit}; "
              f"{test}, p={p:.3g} → {verdict}")
    row.update(against=against, reference_value=ref_value, worse_by=worse, p_value=p, test=test, verdict=verdict,
               reason=reason)
    return row


def decide(candidate_report: dict, references: dict[str, dict], gate_recipe: GateRecipe) -> dict:
    """Pure verdict of a candidate eval report against references {"parent": report?, "base": report?}.

    The base reference defaults to the candidate report's own base arm; a `parent` check without a
    parent report compares with the base (the first stage's parent is the base model).
    """
    checks = [check_one(c, candidate_report, references, gate_recipe) for c in gate_recipe.checks]
    verdicts = [c["verdict"] for c in checks]
    verdict = "fail" if "fail" in verdicts else "warn" if "warn" in verdicts else "pass"
    return {"verdict": verdict, "alpha": gate_recipe.alpha, "checks": checks,
            "counts": {v: verdicts.count(v) for v in ("pass", "warn", "fail")}}


def load_report(run_dir: str | Path) -> dict:
    """A run's eval/report.json (UserError if eval has not been run)."""
    from alignkit.runs import read_json

    path = Path(run_dir) / "eval" / "report.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: no eval/report.json; run `alignkit eval --config … --adapter "
                        f"{Path(run_dir) / 'adapter'}` first")
    return read_json(path, {})


def table(verdict: dict) -> str:
    """The printed table: metric, candidate, reference, margin, p-value, verdict."""
    rows = [("metric", "candidate", "reference", "margin", "p-value", "verdict")]
    for c in verdict["checks"]:
        margin = f"{c['margin']:.0%} rel" if c["relative"] else f"{c['margin']:g}"
        rows.append((c["metric"], f"{c['candidate']:.4g}", f"{c['reference_value']:.4g} ({c['against']})", margin,
                     f"{c['p_value']:.3g}", c["verdict"].upper()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [f"verdict: {verdict['verdict'].upper()}"])


def run_gate(config: str, candidate: str, parent: str | None = None, overrides=()) -> int:
    """`alignkit gate`: decide, write gate.json, record the verdict in the manifest and registry; exit 0/1."""
    from datetime import datetime, timezone

    from alignkit.runs import write_json
    from alignkit.recipe import load_recipe
    from alignkit.runs import find_run

    recipe = load_recipe(config, GateRecipe, overrides)
    run = find_run(candidate)
    report = load_report(run.path)
    references: dict[str, dict] = {}
    parent_run = find_run(parent) if parent else None
    if parent_run is None and run.manifest.get("parent"):
        implied = run.root / run.manifest["parent"]
        if (implied / "eval" / "report.json").is_file():
            parent_run = find_run(implied)
    if parent_run is not None:
        references["parent"] = load_report(parent_run.path)
        if references["parent"].get("model_id") != report.get("model_id"):
            raise UserError(f"{parent_run.path}: parent was evaluated on '{references['parent'].get('model_id')}', "
                            f"the candidate on '{report.get('model_id')}'")
    verdict = decide(report, references, recipe)
    verdict.update(candidate=run.id, parent=parent_run.id if parent_run else None, config=str(config),
                   decided=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_json(run.path / "gate.json", verdict)
    run.update(gate=verdict["verdict"], gate_detail={"file": "gate.json", "config": str(config),
                                                     "decided": verdict["decided"], "counts": verdict["counts"]})
    print(table(verdict))
    print(f"gate: {run.path / 'gate.json'}")
    return 1 if verdict["verdict"] == "fail" else 0
