"""`alignkit eval`, `alignkit eval classify` and `alignkit gate`: the eval command group.

    alignkit eval --config recipes/smollm2/eval.yaml --adapter runs/demo/sft-…/adapter [--suite name=path]…
    alignkit eval classify --input answers.jsonl [--out labels.jsonl] [--labels KEY] [--judge MODEL_DIR]
    alignkit gate --config recipes/smollm2/gate.yaml --candidate runs/demo/sft-… [--parent runs/demo/…]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from datetime import datetime
from pathlib import Path

from alignkit.errors import UserError

USAGE = ("alignkit eval --config FILE [--adapter DIR [--parent DIR]] [--suite NAME[=PATH]]… [--out DIR] [key.sub=value …]\n"
         "       alignkit eval classify --input FILE [--out FILE] [--labels KEY] [--judge MODEL_DIR]")


def register(sub) -> None:
    """Add `eval` (with `eval classify`) and `gate` to the CLI."""
    from alignkit.cli import add_recipe_args

    p = sub.add_parser("eval", help="eval suites on base, prompted base and adapter; classify refusals",
                       usage=USAGE, description=__doc__.splitlines()[0])
    add_recipe_args(p, required=False, config_help="eval recipe YAML, e.g. recipes/smollm2/eval.yaml",
                    words_help="recipe overrides; or the word `classify` for the refusal classifier")
    p.add_argument("--adapter", help="PEFT adapter directory to evaluate (its run gets eval/ and the manifest entry)")
    p.add_argument("--parent", help="the adapter this one was trained from: with reward.model set, the reward-model "
                                    "win rate is taken over its answers instead of the base model's")
    p.add_argument("--suite", action="append", default=[], metavar="NAME[=PATH]",
                   help="add a suite: a bundled name, or name=file/folder/Hub id (xstest, advbench, harmbench, mmlu, "
                        "arc, hellaswag …)")
    p.add_argument("--out", help="eval: output folder (default <run>/eval); classify: output JSONL")
    p.add_argument("--input", help="classify: JSONL/CSV/JSON of records with a response (and a prompt)")
    p.add_argument("--judge", help="classify: a local causal-LM or sequence-classification model as judge")
    p.add_argument("--labels", metavar="KEY", help="classify: the field holding human labels (refusal|compliance, "
                                                   "XSTest's 1_full_compliance|2_full_refusal|3_partial_refusal, "
                                                   "true|false): prints agreement, precision, recall, confusion table")
    p.set_defaults(handler=_eval_or_classify)

    g = sub.add_parser("gate", help="pass/warn/fail an adapter's eval report against base and parent")
    add_recipe_args(g, config_help="gate recipe YAML, e.g. recipes/smollm2/gate.yaml",
                    words_help="override gate recipe values")
    g.add_argument("--candidate", required=True, help="candidate run directory (with eval/report.json)")
    g.add_argument("--parent", help="parent run directory (default: the candidate manifest's parent, if evaluated)")
    g.set_defaults(handler=_gate)


def _eval_or_classify(args: argparse.Namespace) -> int:
    from alignkit.cli import quiet_libraries

    quiet_libraries()
    if args.overrides[:1] == ["classify"]:
        if len(args.overrides) > 1:
            raise UserError(f"eval classify: unexpected arguments {' '.join(args.overrides[1:])}")
        return classify(args)
    if not args.config:
        raise UserError(f"eval: --config is required\nusage: {USAGE}")
    return evaluate_cmd(args)


def evaluate_cmd(args: argparse.Namespace) -> int:
    """Load the recipe, add --suite entries, run every arm, write the report, record it in the run."""
    from alignkit.recipe import load_recipe
    from alignkit.runs import Run
    from eval.config import EvalRecipe
    from eval.report import summary
    from eval.runner import run_eval
    from eval.suites import parse_cli_suite

    recipe = load_recipe(args.config, EvalRecipe, args.overrides)
    extra = [parse_cli_suite(s) for s in args.suite]
    if extra:
        names = {s.name for s in extra}
        recipe = dataclasses.replace(recipe, suites=[s for s in recipe.suites if s.name not in names] + extra)
    adapter = args.adapter or recipe.model.adapter
    run = None
    if adapter:
        run_dir = Path(adapter).parent if Path(adapter).name == "adapter" else Path(adapter)
        run = Run(run_dir) if (run_dir / "manifest.json").is_file() else None
    if args.out:
        out_dir = Path(args.out)
    elif run is not None:
        out_dir = run.path / "eval"
    else:
        out_dir = Path(recipe.output.dir) / f"eval-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    report = run_eval(recipe, adapter, out_dir, parent=args.parent)
    if run is not None:
        run.update(eval={"report": str(out_dir / "report.json"), "metrics": summary(report)})
    for key, value in summary(report).items():
        print(f"  {key:45s} {value:.4f}")
    print(f"report: {out_dir / 'report.md'}")
    return 0


def classify(args: argparse.Namespace) -> int:
    """Label every record's response refusal | compliance (+ partial); with --labels KEY, score the detector
    against the human labels in KEY: agreement, precision, recall and the confusion table."""
    from alignkit.runs import write_text
    from alignkit.data import read_records
    from eval.config import JudgeConfig
    from eval.judge import detector
    from alignkit.refusal import prefix_match
    from eval.validation import confusion, parse_label, table

    if not args.input or not (args.out or args.labels):
        raise UserError("eval classify: --input FILE and --out FILE (or --labels KEY) are required")
    records = read_records(args.input)
    if not records:
        raise UserError(f"{args.input}: no records")
    responses, prompts, human = [], [], []
    for r in records:
        response = next((r.data[k] for k in ("response", "completion", "output", "answer") if k in r.data), None)
        if not isinstance(response, str):
            raise UserError(f"{r.origin}: missing field 'response' (a string; 'completion' or 'output' also work)")
        responses.append(response)
        prompt = next((r.data[k] for k in ("prompt", "instruction", "question") if k in r.data), None)
        prompts.append(prompt if isinstance(prompt, str) else None)
        if args.labels:  # checked before any model runs: a bad row costs nothing
            if args.labels not in r.data:
                raise UserError(f"{r.origin}: missing key {args.labels!r} (the human label --labels names)")
            human.append(parse_label(r.data[args.labels], r.origin, args.labels))
    label, name = detector(JudgeConfig(model=args.judge))
    verdicts = label(responses, prompts)
    if args.out:
        lines = []
        for r, v in zip(records, verdicts):
            row = dict(r.data)
            if "label" in row:
                row["label_input"] = row["label"]
            row.update(refusal=v.refusal, label=v.label, partial=v.partial)
            lines.append(json.dumps(row, ensure_ascii=False))
        write_text(args.out, "\n".join(lines) + "\n")
    refusals = sum(v.refusal for v in verdicts)
    print(f"classified {len(verdicts)} records with {name}: {refusals} refusal(s), "
          f"{sum(v.partial for v in verdicts)} partial")
    if args.labels:
        print(f"against the human labels in {args.labels!r}:")
        print(table(confusion(human, [v.refusal for v in verdicts])))
        baseline = confusion(human, [prefix_match(r).refusal for r in responses])
        print(f"prefix-match baseline: agreement {baseline['agreement']:.3f}  precision {baseline['precision']:.3f}  "
              f"recall {baseline['recall']:.3f}")
    if args.out:
        print(f"labels: {args.out}")
    return 0


def _gate(args: argparse.Namespace) -> int:
    from eval.gate import run_gate

    return run_gate(args.config, args.candidate, args.parent, args.overrides)
