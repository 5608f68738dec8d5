"""The eval report: report.json (per-item outcomes kept), report.md (tables with 95% intervals, uplift,
decontamination, samples), PNG bar charts comparing arms, and the same in W&B (offline by default)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

from alignkit.runs import write_json, write_text


def rows(report: dict) -> list[dict]:
    """One row per (suite, metric, arm): value and 95% interval."""
    out = []
    for arm in report["arm_names"]:
        for suite, res in report["arms"].get(arm, {}).items():
            for name, m in res["metrics"].items():
                out.append({"suite": suite, "metric": name, "arm": arm, "value": m["value"], "lo": m["ci"][0],
                            "hi": m["ci"][1], "n": m["n"]})
    return out


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.3f}" if abs(x) < 100 else f"{x:.1f}"


def markdown(report: dict) -> str:
    """report.md: a table per suite (arms as rows, metrics with 95% intervals), uplift, overlap, samples."""
    lines = ["# Eval report", "", f"- model: `{report['model_id']}`", f"- adapter: `{report['adapter']}`",
             f"- arms: {', '.join(report['arm_names'])}",
             f"- {report.get('detector_validation') or 'refusal detector: `' + report['detector'] + '`'}",
             f"- generation: greedy, max_new_tokens={report['generation']['max_new_tokens']}",
             f"- wall time: {report['wall_time_s']} s", ""]
    if report.get("reward"):
        r = report["reward"]
        lines += [f"Reward model `{r['model']}`: `reward_win_rate` is the share of prompts where it scores the adapter's "
                  f"answer above the {r['reference'] or 'base'} model's (ties half).", ""]
    if report.get("system_prompt"):
        lines += [f"Prompted arm system prompt: _{report['system_prompt']}_", ""]
    table = rows(report)
    for suite, info in report["suites"].items():
        lines += [f"## {suite} ({info['kind']}, {info['items']} items, {info['source']})", ""]
        if info.get("skipped"):
            lines += [f"Skipped: {info['skipped']}", ""]
            continue
        metrics = sorted({r["metric"] for r in table if r["suite"] == suite})
        if not metrics:
            continue
        lines += ["| arm | " + " | ".join(f"{m} (95% CI)" for m in metrics) + " |",
                  "|---|" + "---|" * len(metrics)]
        for arm in report["arm_names"]:
            cells = []
            for m in metrics:
                r = next((r for r in table if r["suite"] == suite and r["metric"] == m and r["arm"] == arm), None)
                cells.append(f"{_fmt(r['value'])} [{_fmt(r['lo'])}, {_fmt(r['hi'])}]" if r else "–")
            if any(c != "–" for c in cells):
                lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    if report.get("uplift"):
        lines += ["## Uplift of the adapter (positive = better; perplexity relative)", "",
                  "| metric | vs base | vs prompted | beats prompted by ≥5% |", "|---|---|---|---|"]
        for metric, u in report["uplift"].items():
            beats = u.get("beats_prompted_by_5pct")
            lines.append(f"| {metric} | {_fmt(u.get('vs_base'))} | {_fmt(u.get('vs_prompted'))} | "
                         f"{'–' if beats is None else 'yes' if beats else 'no'} |")
        lines.append("")
    dec = report.get("decontamination", {})
    lines += ["## Decontamination (13-gram overlap with the training data)", ""]
    if dec.get("suites"):
        lines += [f"Training files: {', '.join(dec['train_files'])}", "", "| suite | items | contaminated |",
                  "|---|---|---|"]
        lines += [f"| {s} | {d['items']} | {d['contaminated']} |" for s, d in dec["suites"].items()]
    else:
        lines.append(dec.get("note", "not checked"))
    lines.append("")
    lines += ["## Sample generations", ""]
    for arm in report["arm_names"]:
        for suite, res in report["arms"].get(arm, {}).items():
            if not res.get("samples"):
                continue
            lines += [f"### {suite} · {arm}", ""]
            for s in res["samples"]:
                extra = "".join(f" · {k}={s[k]}" for k in ("refused", "partial", "correct") if k in s)
                prompt = str(s.get("prompt", "")).replace("\n", " ")[:200]
                answer = str(s.get("response", "")).replace("\n", " ")[:300]
                lines.append(f"- **{s['id']}**{extra}: _{prompt}_ → {answer}")
            lines.append("")
    return "\n".join(lines)


def plots(report: dict, out_dir: Path) -> list[Path]:
    """One PNG per suite: a bar per (metric, arm) with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = rows(report)
    files = []
    colors = {"base": "#9e9e9e", "prompted": "#64b5f6", "adapter": "#ef6c00"}
    for suite in report["suites"]:
        data = [r for r in table if r["suite"] == suite and math.isfinite(r["value"])]
        if not data:
            continue
        metrics = sorted({r["metric"] for r in data})
        arms = [a for a in report["arm_names"] if any(r["arm"] == a for r in data)]
        fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(metrics), 3.2))
        width = 0.8 / len(arms)
        for j, arm in enumerate(arms):
            xs, ys, errs = [], [], [[], []]
            for i, m in enumerate(metrics):
                r = next((r for r in data if r["metric"] == m and r["arm"] == arm), None)
                if r is None:
                    continue
                xs.append(i + (j - (len(arms) - 1) / 2) * width)
                ys.append(r["value"])
                errs[0].append(max(r["value"] - r["lo"], 0) if math.isfinite(r["lo"]) else 0)
                errs[1].append(max(r["hi"] - r["value"], 0) if math.isfinite(r["hi"]) else 0)
            ax.bar(xs, ys, width, yerr=errs, capsize=3, label=arm, color=colors.get(arm))
        ax.set_xticks(range(len(metrics)), metrics)
        ax.set_title(f"{suite} ({report['suites'][suite]['items']} items), 95% CI")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{suite}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)
    return files


def summary(report: dict) -> dict:
    """Flat `arm/suite.metric` → value, for W&B summaries and manifests."""
    return {f"{r['arm']}/{r['suite']}.{r['metric']}": r["value"] for r in rows(report)}


def write(report: dict, out_dir: Path, tracking_cfg) -> None:
    """Write report.json, report.md and the PNGs; log metrics and sample tables to W&B when tracking asks."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "report.json", report)
    write_text(out_dir / "report.md", markdown(report))
    report["plots"] = [p.name for p in plots(report, out_dir)]
    write_json(out_dir / "report.json", report)
    if tracking_cfg is not None and tracking_cfg.backend == "wandb":
        _wandb(report, out_dir, tracking_cfg)


def _wandb(report: dict, out_dir: Path, tracking_cfg) -> None:
    from alignkit import tracking

    run_like = SimpleNamespace(id=f"eval-{out_dir.parent.name}", path=out_dir)
    wb = tracking.start_wandb(tracking_cfg, run_like, job_type="eval",
                              config={k: report[k] for k in ("model_id", "adapter", "arm_names", "generation")})
    logger = tracking.WandbLogger(wb)
    logger.log_table("eval/metrics", rows(report))
    for arm in report["arm_names"]:
        for suite, res in report["arms"].get(arm, {}).items():
            if res.get("samples"):
                logger.log_table(f"eval/samples/{suite}/{arm}",
                                 [{k: str(v) for k, v in s.items()} for s in res["samples"]])
    tracking.finish_wandb(wb, summary(report))
