"""Tracking: metrics.jsonl always, W&B when asked (offline without an API key, never a login prompt).

Training stages hand W&B to TRL via `report_to`; we open the W&B run ourselves first so its id,
group, job type and config (the manifest) are ours, and TRL's callback reuses it.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


class JsonlLogger:
    """Appends one JSON object per log call to metrics.jsonl."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {"step": step, "time": round(time.time(), 3), **metrics}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=float) + "\n")


class NullLogger:
    """Logs nothing: the metrics logger of ranks other than 0 (rank 0 writes metrics.jsonl once)."""

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass


class WandbLogger:
    """A W&B run (offline unless an API key is set and mode allows online): metrics, config, tables."""

    def __init__(self, run):
        self.run = run

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.run.log(metrics)

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        import wandb

        if rows:
            columns = list(rows[0])
            self.run.log({name: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})

    def close(self) -> None:
        self.run.finish()


def wandb_mode(mode: str) -> str:
    """The W&B mode to use: online only with an API key, so a run never stops at a login prompt."""
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or "online"
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        return "offline"
    return mode


def start_wandb(tracking, run, job_type: str, config: dict[str, Any]):
    """Open the W&B run for a stage run; returns it, or None when tracking.backend is none."""
    if tracking.backend != "wandb":
        return None
    import wandb

    mode = wandb_mode(tracking.mode)
    os.environ["WANDB_MODE"] = mode  # TRL's callback and wandb's service read it too
    os.environ.setdefault("WANDB_SILENT", "true")
    settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)
    wb = wandb.init(project=tracking.project, group=tracking.group, job_type=job_type, name=run.id,
                    dir=str(run.path), config=config, mode=mode, reinit="finish_previous", settings=settings)
    return wb


def finish_wandb(wb, summary: dict[str, Any] | None = None) -> None:
    """Write summary values and close the W&B run."""
    if wb is None:
        return
    for key, value in (summary or {}).items():
        wb.summary[key] = value
    wb.finish()


class MetricsCallback(TrainerCallback):
    """Writes every Trainer log to metrics.jsonl and stops the run on a NaN/inf loss."""

    def __init__(self, logger: JsonlLogger):
        self.logger = logger
        self.bad_loss: tuple[int, float] | None = None
        self.last: dict[str, float] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
        self.logger.log({"epoch": state.epoch, **logs}, step=state.global_step)
        self.last.update(logs)
        for key in ("loss", "eval_loss"):
            value = logs.get(key)
            if value is not None and not math.isfinite(value):
                self.bad_loss = (state.global_step, value)
                control.should_training_stop = True
        return control
