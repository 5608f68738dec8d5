"""What every training stage does around its TRL trainer: open (or resume) a run, build TRL args, close it.

A stage's train.py reads: load model → load data → `open_run` → build the TRL trainer with
`trl_args` → train → `close_run`. Nothing here trains; TRL does.
"""

from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from alignkit import runs, tracking
from alignkit.errors import TrainingFailed, UserError
from alignkit.recipe import to_dict


def start(model_cfg):
    """What every stage does first: the tokenizer (checked, with its template sha256) and, when the recipe
    continues an adapter, the run that made it (after checking the adapter was trained on this base)."""
    from alignkit import models

    tokenizer, template_sha = models.load_tokenizer(model_cfg.base, model_cfg.revision, model_cfg.trust_remote_code)
    parent = None
    if model_cfg.adapter:
        models.check_adapter_base(model_cfg.adapter, model_cfg.base)
        parent = runs.parent_of_adapter(model_cfg.adapter)
    return tokenizer, template_sha, parent


def model_manifest(model_cfg, template_sha: str) -> dict[str, Any]:
    """The manifest's base-model and chat-template entries, the same for every stage."""
    from alignkit import models

    return {"base_model": {"spec": model_cfg.base, "id": models.canonical_id(model_cfg.base)},
            "chat_template_sha256": template_sha}


@dataclass
class OpenRun:
    """A started (or resumed) run with its trackers."""

    run: runs.Run
    resume_from: str | None
    metrics: tracking.MetricsCallback
    wandb: Any


def open_run(recipe: Any, stage: str, *, inputs: dict[str, str], parent: runs.Run | None,
             extra: dict[str, Any]) -> OpenRun:
    """Start a run for `recipe`, or reopen an interrupted one with the same fingerprint (resume: auto)."""
    resolved = to_dict(recipe)
    # The fingerprint ignores where results go and how they are tracked: same work, same fingerprint.
    work = {k: v for k, v in resolved.items() if k not in ("output", "tracking")}
    fp = runs.fingerprint(stage, work, inputs, parent.id if parent else None)
    run, resume_from = None, None
    if recipe.output.resume == "auto":
        run = runs.resumable(recipe.output.dir, stage, fp)
        if run is not None:
            resume_from = runs.last_checkpoint(run)
            print(f"alignkit: resuming {run.id} from {Path(resume_from).name}")
            run.update(status="running", pid=_pid(), host=_host(), resumed_from=resume_from)
    if run is None:
        run = runs.start_run(recipe.output.dir, stage, resolved, parent=parent.id if parent else None,
                             fingerprint_=fp, inputs=inputs, **extra)
    wb = tracking.start_wandb(recipe.tracking, run, job_type=stage, config=run.manifest)
    if wb is not None:
        run.update(wandb={"id": wb.id, "project": recipe.tracking.project, "group": recipe.tracking.group,
                          "mode": tracking.wandb_mode(recipe.tracking.mode), "dir": str(run.path / "wandb")})
    return OpenRun(run, resume_from, tracking.MetricsCallback(tracking.JsonlLogger(run.metrics_path)), wb)


def trl_args(config_cls: type, train: dict, opened: OpenRun, tracking_cfg, defaults: dict[str, Any]):
    """The TRL config: our defaults, then the recipe's `train:` verbatim, then the run's own paths."""
    kwargs = {**precision_defaults(), **defaults}
    for old, new in ALIASES.items():  # a recipe's deprecated name must beat our default under the new one
        if old in train:
            kwargs.pop(new, None)
    kwargs.update(train)
    kwargs.update(output_dir=str(opened.run.path / "checkpoints"),
                  report_to=["wandb"] if opened.wandb is not None else "none",
                  run_name=opened.run.id)
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise UserError(f"train: {config_cls.__name__} rejected the recipe: {e}") from None


def build_trainer(trainer_cls: type, **kwargs: Any):
    """Construct a TRL trainer; a configuration TRL rejects is the recipe's problem, reported as such."""
    try:
        return trainer_cls(**kwargs)
    except ValueError as e:
        raise UserError(f"train: {trainer_cls.__name__} rejected the recipe: {e}") from None


# transformers 5 renamed these; TRL still accepts the old names.
ALIASES = {"gradient_checkpointing": "activation_checkpointing"}


def precision_defaults() -> dict[str, Any]:
    """bf16 mixed precision where the hardware has it: a bf16 GPU, or a CPU with native bf16 (AVX512-BF16/AMX),
    where autocast measured 1.2x faster than float32 on SmolLM2-135M; float32 elsewhere."""
    import torch

    if torch.cuda.is_available():
        return {"bf16": torch.cuda.is_bf16_supported(), "fp16": False}
    return {"bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "fp16": False, "use_cpu": True}


@contextlib.contextmanager
def guard(opened: OpenRun) -> Iterator[None]:
    """Mark the run failed or interrupted if the body does not finish; SIGTERM counts as an interrupt."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except KeyboardInterrupt:
        opened.run.finish("interrupted")
        tracking.finish_wandb(opened.wandb)
        raise
    except BaseException as e:
        opened.run.finish("failed", error=f"{type(e).__name__}: {e}"[:500])
        tracking.finish_wandb(opened.wandb, {"status": "failed"})
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_finite(opened: OpenRun) -> None:
    """Raise TrainingFailed if training stopped on a NaN/inf loss."""
    if opened.metrics.bad_loss is not None:
        step, value = opened.metrics.bad_loss
        raise TrainingFailed(f"loss became {value} at step {step}; the run is marked failed "
                             "(lower train.learning_rate or check the data)")


def close_run(opened: OpenRun, summary: dict[str, Any], **fields: Any) -> runs.Run:
    """Mark the run completed with its summary metrics, in the manifest and in W&B."""
    opened.run.finish("completed", metrics=summary, **fields)
    tracking.finish_wandb(opened.wandb, summary)
    return opened.run


def _pid() -> int:
    import os

    return os.getpid()


def _host() -> str:
    import socket

    return socket.gethostname()
