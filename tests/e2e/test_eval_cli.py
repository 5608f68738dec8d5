"""The real `alignkit eval` and `alignkit gate` in subprocesses, on a run directory with an adapter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignkit import models, runs
from alignkit.recipe import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
SUITES = ("suites=[{name: harmful, limit: 3}, {name: benign, limit: 3}, {name: mc, limit: 4}, "
          "{name: passages, limit: 2}, {name: kl, limit: 2}]")


def cli(*args, env=ENV):
    return subprocess.run([sys.executable, "-m", "alignkit.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=900)


def run_with_adapter(root: Path, base: str) -> runs.Run:
    """A completed run folder whose adapter/ is a random LoRA on `base` (what `alignkit sft` leaves)."""
    tokenizer, _ = models.load_tokenizer(base)
    model = models.attach_lora(models.load_model(ModelConfig(base=base)), {"r": 4})
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    run = runs.start_run(root, "sft", {"data": {"train": str(ROOT / "recipes/data/sft_demo.jsonl")}})
    models.save_adapter(model, tokenizer, run.adapter_dir)
    run.finish("completed")
    return run


def test_eval_then_gate_on_a_run(tmp_path, tiny_model_dir):
    run = run_with_adapter(tmp_path / "runs", tiny_model_dir)
    proc = cli("eval", "--config", "recipes/smollm2/eval.yaml", "--adapter", str(run.adapter_dir),
               f"model.base={tiny_model_dir}", SUITES, "generation.max_new_tokens=4", f"cache.dir={tmp_path}/cache",
               f"output.dir={tmp_path}/runs", "tracking.backend=wandb")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run.path / "eval" / "report.json").read_text())
    assert report["arm_names"] == ["base", "prompted", "adapter"] and (run.path / "eval" / "report.md").is_file()
    assert report["decontamination"]["train_files"]  # from the run's manifest
    assert run.manifest["eval"]["metrics"]["adapter/mc.acc"] == report["arms"]["adapter"]["mc"]["metrics"]["acc"]["value"]
    assert list((run.path / "eval").glob("wandb/offline-run-*")) or list((run.path / "eval").rglob("offline-run-*"))

    gate = tmp_path / "gate.yaml"
    gate.write_text("checks:\n  - {metric: mc.acc, reference: base, margin: 1.0}\n")  # cannot be past
    proc = cli("gate", "--config", str(gate), "--candidate", str(run.path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mc.acc" in proc.stdout and "verdict: PASS" in proc.stdout
    assert runs.read_registry(tmp_path / "runs")["runs"][run.id]["gate"] == "pass"

    proc = cli("eval", "--config", "recipes/smollm2/eval.yaml", "--adapter", str(run.adapter_dir),
               f"model.base={tiny_model_dir}", "--suite", "toxicity")
    assert proc.returncode == 2 and "unknown suite; valid suites" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_eval_on_the_embedded_model_with_reduced_suites(tmp_path):
    """SmolLM2-135M-Instruct, all arms, a few items per suite: refusals are detected and perplexity is sane."""
    run = run_with_adapter(tmp_path / "runs", "smollm2-135m-instruct")
    proc = cli("eval", "--config", "recipes/smollm2/eval.yaml", "--adapter", str(run.adapter_dir),
               "suites=[{name: harmful, limit: 6}, {name: benign, limit: 6}, {name: mc, limit: 12}, "
               "{name: passages, limit: 4}, {name: kl, limit: 3}]", "generation.max_new_tokens=24",
               f"cache.dir={tmp_path}/cache", f"output.dir={tmp_path}/runs", "tracking.backend=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run.path / "eval" / "report.json").read_text())
    assert 1 < report["arms"]["base"]["passages"]["metrics"]["perplexity"]["value"] < 100
    assert report["arms"]["adapter"]["kl"]["metrics"]["mean_kl"]["value"] >= 0
    answers = [it["response"] for it in report["arms"]["base"]["harmful"]["items"]]
    assert all(isinstance(a, str) and a for a in answers)
