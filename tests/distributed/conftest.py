"""Shared by the multi-process tests: small copies of the demo data, the CLI in a subprocess with a hard
timeout (a launch waiting forever for a rendezvous fails the test instead of hanging the suite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# OMP_NUM_THREADS=1: two processes on two cores, one thread each (what torchrun sets for N > 1)
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
       "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# 2 optimizer steps on a few records, logged every step; no near-dedup (MinHash on 16 records is noise). No
# warm-up: the first step must update the weights, or step 2's loss would not depend on the gradient all-reduce.
STEPS = ["train.max_steps=2", "train.logging_steps=1", "train.warmup_steps=0", "train.lr_scheduler_type=constant"]
# lora.dropout=0: dropout masks are drawn per process (each rank from the same seed), so 2 x 1 and 1 x 2 would
# drop different activations; DPO needs no such override (TRL's disable_dropout)
SFT = ["--config", "recipes/smollm2/sft.yaml", "data.near_dedup=false", "data.val_fraction=0", *STEPS,
       "train.gradient_accumulation_steps=1", "lora.dropout=0", "train.bf16=false", "tracking.backend=wandb"]
DPO = ["--config", "recipes/smollm2/dpo.yaml", "data.near_dedup=false", "data.val_fraction=0", *STEPS,
       "train.gradient_accumulation_steps=1", "train.max_length=96", "data.max_tokens=96",
       # the sigmoid loss alone: the recipe's RPO term (loss_type [sigmoid, sft]) averages tokens per rank, so
       # 2 ranks x 1 pair differ from 1 x 2 pairs of unequal length (measured 9.8% at step 1; docs/distributed.md)
       "train.loss_type=[sigmoid]", "train.loss_weights=null",
       # float32 and 10x the recipe's rate: the step-2 loss then moves from log 2 well past rounding
       "train.bf16=false", "train.learning_rate=5.0e-4",
       "reference.pairs=2", "train.eval_strategy=no", "train.save_steps=1000", "train.metric_for_best_model=null",
       "train.load_best_model_at_end=false"]


def cli(*args, cwd: Path, timeout: int = 400, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """`alignkit …` (or `<launcher> -m alignkit.cli …`) in `cwd`; fails the test on a hang."""
    cmd = [*(launcher or [sys.executable]), "-m", "alignkit.cli", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=ENV, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd[:6])} … did not finish in {timeout} s (a rendezvous waiting forever?):\n"
                    f"{(e.stderr or b'')[-3000:]!r}")


def runs_in(root: Path) -> tuple[list[Path], dict]:
    """The run directories under `root` and its registry."""
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "manifest.json").is_file())
    return dirs, json.loads((root / "registry.json").read_text())


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """A folder with recipes/ linked in and 16 SFT conversations + 24 DPO pairs of the demo data."""
    folder = tmp_path_factory.mktemp("dist")
    (folder / "recipes").symlink_to(ROOT / "recipes")
    sft = (ROOT / "recipes/data/sft_demo.jsonl").read_text().splitlines()[:16]
    dpo = (ROOT / "recipes/data/dpo_demo.jsonl").read_text().splitlines()[:24]
    (folder / "sft16.jsonl").write_text("\n".join(sft) + "\n")
    (folder / "dpo24.jsonl").write_text("\n".join(dpo) + "\n")
    return folder
