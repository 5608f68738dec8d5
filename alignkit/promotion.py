"""Promotion: which completed run the registry names `promoted`, with its lineage; promote and rollback are atomic
and logged in registry.json (kept by `alignkit.runs`).

`alignkit runs list | show ID | promote ID [--force --reason …] | rollback`
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from alignkit import runs
from alignkit.errors import UserError

PASSING = ("pass", "warn")  # a warning is a pass with something to look at; both may be promoted


def lineage(root: str | Path, run_id: str) -> list[str]:
    """The run ids from the first stage down to `run_id` (base → SFT → DPO …)."""
    reg = runs.read_registry(root)
    chain, seen = [], set()
    while run_id and run_id not in seen:
        seen.add(run_id)
        chain.append(run_id)
        run_id = reg["runs"].get(run_id, {}).get("parent")
    return list(reversed(chain))


def promote(root: str | Path, run_id: str, *, force: bool = False, reason: str | None = None) -> dict:
    """Point the promoted alias at `run_id`; refuses a run that is not completed with a passing gate."""
    run = runs.find_run(run_id, root)
    status, gate = run.status, run.manifest.get("gate")
    if status != "completed":
        raise UserError(f"{run.id}: status is '{status}'; only a completed run can be promoted")
    if gate not in PASSING and not force:
        raise UserError(f"{run.id}: its gate is '{gate or 'not run'}'; promote only passing runs, or use "
                        "--force --reason '…' (recorded)")
    if force and not reason:
        raise UserError("--force needs --reason: the registry records why a gate was overridden")
    with runs.registry(run.root) as reg:
        event = {"at": _now(), "action": "promote", "run": run.id, "previous": reg.get("promoted"),
                 "gate": gate, "forced": force, "reason": reason, "lineage": lineage(run.root, run.id)}
        reg["promoted"] = run.id
        reg.setdefault("history", []).append(event)
    _wandb_alias(run)
    return event


def rollback(root: str | Path) -> dict:
    """Re-point the promoted alias to the run promoted before the current one."""
    with runs.registry(root) as reg:
        promotions = [e for e in reg.get("history", []) if e["action"] in ("promote", "rollback")]
        if not reg.get("promoted") or not promotions:
            raise UserError(f"{root}: nothing is promoted, nothing to roll back")
        stack: list[str] = []
        for e in promotions:  # replay: promote pushes, rollback pops
            if e["action"] == "promote":
                stack.append(e["run"])
            elif stack:
                stack.pop()
        if len(stack) < 2:
            raise UserError(f"{root}: no earlier promoted run to roll back to (current: {reg['promoted']})")
        event = {"at": _now(), "action": "rollback", "run": stack[-2], "previous": stack[-1]}
        reg["promoted"] = stack[-2]
        reg["history"].append(event)
    return event


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _wandb_alias(run: runs.Run) -> None:
    """Online only: log the adapter as a W&B artifact aliased `promoted`, so W&B's registry tells the same story."""
    wb = run.manifest.get("wandb") or {}
    if not wb or wb.get("mode") != "online" or not os.environ.get("WANDB_API_KEY"):
        return
    import wandb

    with wandb.init(project=wb.get("project"), group=wb.get("group"), job_type="promote", id=wb.get("id"),
                    resume="allow") as w:
        artifact = wandb.Artifact(f"adapter-{run.id}", type="model", metadata={"gate": run.manifest.get("gate")})
        artifact.add_dir(str(run.adapter_dir))
        w.log_artifact(artifact, aliases=["promoted", run.id])


def register(sub) -> None:
    """Add `alignkit runs …` to the CLI."""
    p = sub.add_parser("runs", help="list, show, promote and roll back stage runs")
    p.add_argument("--dir", default="runs/demo", help="the run folder (holds registry.json)")
    p.add_argument("--debug", action="store_true")
    actions = p.add_subparsers(dest="runs_command", required=True)
    actions.add_parser("list", help="every run: stage, status, gate, parent; * marks the promoted one")
    show = actions.add_parser("show", help="one run's manifest summary and lineage")
    show.add_argument("run")
    prom = actions.add_parser("promote", help="promote a run whose gate passed")
    prom.add_argument("run")
    prom.add_argument("--force", action="store_true", help="promote despite its gate (needs --reason)")
    prom.add_argument("--reason")
    actions.add_parser("rollback", help="re-point the promoted alias to the previous promoted run")
    p.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not (root / "registry.json").is_file():
        raise UserError(f"{root}: no registry.json (run a stage or pipeline with output.dir={root})")
    if args.runs_command == "list":
        reg = runs.read_registry(root)
        print(f"{'':2}{'run':<30}{'stage':<8}{'status':<12}{'gate':<6}parent")
        for run_id in sorted(reg["runs"]):
            e = reg["runs"][run_id]
            status = runs.Run(root / run_id).status if (root / run_id / "manifest.json").is_file() else e.get("status")
            mark = "* " if reg.get("promoted") == run_id else "  "
            print(f"{mark}{run_id:<30}{e.get('stage', ''):<8}{status:<12}{str(e.get('gate') or '-'):<6}"
                  f"{e.get('parent') or '-'}")
    elif args.runs_command == "show":
        run = runs.find_run(args.run, root)
        m = run.manifest
        keep = ("stage", "status", "parent", "gate", "started", "wall_time_s", "base_model", "chat_template_sha256",
                "metrics", "fingerprint", "wandb")
        print(json.dumps({k: m.get(k) for k in keep}, indent=2, default=str))
        print("lineage: base → " + " → ".join(lineage(root, run.id)))
    elif args.runs_command == "promote":
        e = promote(root, args.run, force=args.force, reason=args.reason)
        print(f"promoted {e['run']} (was {e['previous'] or 'nothing'}); lineage: {' → '.join(e['lineage'])}")
    else:
        e = rollback(root)
        print(f"rolled back: promoted is now {e['run']} (was {e['previous']})")
    return 0
