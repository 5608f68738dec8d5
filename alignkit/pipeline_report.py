"""`alignkit report runs/demo`: the pipeline's story on one page (report.md + PNGs in runs/demo/report/).

Reads only files: registry.json, each run's manifest.json, metrics.jsonl, eval/report.json and gate.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alignkit import runs
from alignkit.errors import UserError
from alignkit.runs import read_json, write_text

CURVES = ("loss", "eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "reward", "kl", "eval_accuracy")
SAMPLE_SUITES = ("harmful", "benign")


def _chain(root: Path) -> list[runs.Run]:
    """Completed runs in lineage order (a parent before its children), newest lineage last."""
    reg = runs.read_registry(root)
    ordered = sorted(reg["runs"], key=lambda r: reg["runs"][r].get("created") or r)
    return [runs.Run(root / r) for r in ordered if (root / r / "manifest.json").is_file()]


def _value(metric: Any) -> float | None:
    return metric.get("value") if isinstance(metric, dict) else None


def suite_table(base: dict | None, stages: list[tuple[str, dict]]) -> dict[str, dict[str, float]]:
    """metric → {arm label → value}: base and prompted from the base report, then each stage's adapter arm."""
    table: dict[str, dict[str, float]] = {}

    def add(label: str, arm: dict) -> None:
        for suite, result in arm.items():
            for name, metric in result.get("metrics", {}).items():
                if _value(metric) is not None:
                    table.setdefault(f"{suite}.{name}", {})[label] = _value(metric)

    if base:
        for arm in ("base", "prompted"):
            add(arm, base.get("arms", {}).get(arm, {}))
    for label, report in stages:
        add(label, report.get("arms", {}).get("adapter", {}))
    return table


def _plot_curves(run: runs.Run, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not run.metrics_path.is_file():
        return None
    rows = [json.loads(l) for l in run.metrics_path.read_text().splitlines() if l.strip()]
    keys = [k for k in CURVES if any(k in r for r in rows)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in rows if key in r and r.get("step") is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.suptitle(f"{run.manifest.get('stage')} · {run.id}")
    fig.tight_layout()
    path = out / f"curves-{run.id}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_suites(table: dict[str, dict[str, float]], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in table if not m.endswith("partial_rate")]
    if not metrics:
        return None
    cols = min(3, len(metrics))
    rows_n = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.5 * cols, 3.2 * rows_n), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        labels = list(table[metric])
        ax.bar(labels, [table[metric][l] for l in labels], color=["#999", "#bbb"] + ["#3a7"] * len(labels))
        ax.set_title(metric)
        ax.tick_params(axis="x", labelrotation=20)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    path = out / "suites.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("|", "\\|").replace("<", "&lt;")


def write(root: str | Path) -> Path:
    """Write <root>/report/report.md and its PNGs; returns the report path."""
    root = Path(root)
    if not (root / "registry.json").is_file():
        raise UserError(f"{root}: no registry.json; run `alignkit pipeline` (or a stage) with this output dir")
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    reg = runs.read_registry(root)
    chain = _chain(root)
    base = read_json(root / "base" / "eval" / "report.json", None)
    evaluated = [(f"{r.manifest.get('stage')}", read_json(r.path / "eval" / "report.json", None)) for r in chain]
    evaluated = [(label, rep) for label, rep in evaluated if rep]
    if base is None and evaluated:
        base = evaluated[0][1]
    table = suite_table(base, evaluated)
    lines = [f"# alignkit report: {root}", "", f"**Promoted:** {reg.get('promoted') or 'nothing yet'}", ""]
    lines += ["## Stages", "", "| run | stage | status | parent | wall time | gate | key metrics |", "|---|---|---|---|---|---|---|"]
    for run in chain:
        m = run.manifest
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in (m.get("metrics") or {}).items() if isinstance(v, float))[:120]
        lines.append(f"| {run.id} | {m.get('stage')} | {run.status} | {m.get('parent') or 'base'} | "
                     f"{m.get('wall_time_s', '')} s | {(m.get('gate') or '-').upper()} | {metrics} |")
    if table:
        labels = ["base", "prompted"] + [label for label, _ in evaluated]
        labels = list(dict.fromkeys(l for l in labels if any(l in v for v in table.values())))
        lines += ["", "## Suites across arms", "", "| metric | " + " | ".join(labels) + " |",
                  "|---|" + "---|" * len(labels)]
        for metric, values in table.items():
            lines.append(f"| {metric} | " + " | ".join(f"{values[l]:.3f}" if l in values else "-" for l in labels) + " |")
        plot = _plot_suites(table, out)
        if plot:
            lines += ["", f"![suites]({plot.name})"]
    lines += ["", "## Gates"]
    for run in chain:
        gate = read_json(run.path / "gate.json", None)
        if not gate:
            continue
        lines += ["", f"### {run.manifest.get('stage')} · {run.id}: {gate['verdict'].upper()}", "",
                  "| metric | candidate | reference | margin | p-value | verdict |", "|---|---|---|---|---|---|"]
        for c in gate["checks"]:
            lines.append(f"| {c['metric']} | {c['candidate']:.4g} | {c['reference_value']:.4g} ({c['against']}) | "
                         f"{c['margin']:g}{' rel' if c.get('relative') else ''} | {c['p_value']:.3g} | "
                         f"{c['verdict'].upper()} |")
    lines += ["", "## Training curves", ""]
    for run in chain:
        plot = _plot_curves(run, out)
        if plot:
            lines.append(f"![{run.id}]({plot.name})")
    arms = ([("base", base["arms"].get("base", {})), ("prompted", base["arms"].get("prompted", {}))] if base else [])
    arms += [(label, rep["arms"].get("adapter", {})) for label, rep in evaluated]
    for suite in SAMPLE_SUITES:
        answers = [(label, {s["id"]: s for s in arm.get(suite, {}).get("samples", [])}) for label, arm in arms]
        answers = [(label, a) for label, a in answers if a]
        if not answers:
            continue
        ids = list(answers[0][1])[:5]
        lines += ["", f"## Sample answers: {suite}", "", "| prompt | " + " | ".join(l for l, _ in answers) + " |",
                  "|---|" + "---|" * len(answers)]
        for i in ids:
            prompt = answers[0][1][i].get("prompt", "")
            lines.append(f"| {_cell(prompt, 90)} | " + " | ".join(_cell(a.get(i, {}).get("response", "-"))
                                                                  for _, a in answers) + " |")
    path = out / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def register(sub) -> None:
    """Add `alignkit report DIR` to the CLI."""
    p = sub.add_parser("report", help="the pipeline's story in one page: report.md + PNGs")
    p.add_argument("dir", nargs="?", default="runs/demo", help="the run folder")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(handler=_command)


def _command(args) -> int:
    print(f"report: {write(args.dir)}")
    return 0
