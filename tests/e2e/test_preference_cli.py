"""The preference stage through the real CLI: exit codes for bad input, and the embedded model end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "preference"))
from pref_helpers import make_parent, short_pairs, write_jsonl  # noqa: E402

from alignkit import runs  # noqa: E402


def cli(*args, cwd=ROOT, timeout=900):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_template_mismatch_exits_2_without_traceback_and_parent_untouched(tmp_path, tiny_model_dir):
    parent = make_parent(tmp_path / "runs", tiny_model_dir, template_sha="cd" * 32)
    before = runs.read_registry(parent.root)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", short_pairs(10))
    proc = cli("-m", "preference", "--config", str(ROOT / "recipes/smollm2/dpo.yaml"), f"model.base={tiny_model_dir}",
               f"model.adapter={parent.adapter_dir}", f"data.train={pairs}", f"output.dir={parent.root}",
               "tracking.backend=none")
    assert proc.returncode == 2, proc.stderr
    assert "error: chat template mismatch" in proc.stderr and "cdcdcdcd" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert runs.read_registry(parent.root) == before


def test_no_usable_pairs_exits_2_via_alignkit_dpo(tmp_path):
    pairs = write_jsonl(tmp_path / "ties.jsonl", [{"prompt": "Q?", "chosen": "Same.", "rejected": "Same."}])
    proc = cli("-m", "alignkit.cli", "dpo", "--config", str(ROOT / "recipes/smollm2/dpo.yaml"),
               f"data.train={pairs}", "pairs.invalid=drop", f"output.dir={tmp_path / 'runs'}", "tracking.backend=none")
    assert proc.returncode == 2 and "no usable pairs after validation" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def demo_subset(path: Path, per_kind: int) -> Path:
    """A balanced slice of the bundled demo pairs (each behaviour equally), to keep the run to a few steps."""
    rows, seen = [], {}
    for line in (ROOT / "recipes/data/dpo_demo.jsonl").read_text().splitlines():
        row = json.loads(line)
        if seen.get(row["kind"], 0) < per_kind:
            seen[row["kind"]] = seen.get(row["kind"], 0) + 1
            rows.append(row)
    return write_jsonl(path, rows)


@pytest.mark.slow
def test_dpo_on_the_embedded_model_raises_held_out_preference_accuracy(tmp_path):
    out = tmp_path / "runs"
    sft = cli("-m", "sft", "--config", str(ROOT / "recipes/smollm2/sft.yaml"), f"output.dir={out}",
              "tracking.backend=none", "train.max_steps=2", "train.per_device_train_batch_size=4",
              "data.val_fraction=0", "data.test_fraction=0", "train.save_steps=1000")
    assert sft.returncode == 0, sft.stderr[-2000:]
    (sft_run,) = out.glob("sft-*")
    pairs = demo_subset(tmp_path / "pairs.jsonl", per_kind=10)
    dpo = cli("-m", "alignkit.cli", "dpo", "--config", str(ROOT / "recipes/smollm2/dpo.yaml"),
              f"model.adapter={sft_run / 'adapter'}", f"data.train={pairs}", "data.val_fraction=0.25",
              f"output.dir={out}", "tracking.backend=none", "train.max_steps=2", "train.eval_steps=2",
              "train.save_steps=2", "train.learning_rate=3e-4", "train.warmup_steps=0", "train.eval_on_start=true")
    assert dpo.returncode == 0, dpo.stderr[-2000:]
    (dpo_run,) = out.glob("dpo-*")
    manifest = json.loads((dpo_run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["parent"] == sft_run.name
    rows = [json.loads(line) for line in (dpo_run / "metrics.jsonl").read_text().splitlines()]
    accuracy = [r["eval_rewards/accuracies"] for r in rows if "eval_rewards/accuracies" in r]
    assert accuracy[0] == 0.0  # step 0: policy == reference, every implicit reward is exactly 0
    assert accuracy[-1] > 0.5 and accuracy[-1] > accuracy[0]
    assert manifest["metrics"]["eval_preference_accuracy"] > 0.5 and manifest["metrics"]["eval_reward_margin"] > 0

    from safetensors.torch import load_file

    before = load_file(sft_run / "adapter" / "adapter_model.safetensors")
    after = load_file(dpo_run / "adapter" / "adapter_model.safetensors")
    assert set(before) == set(after) and any((before[k] - after[k]).abs().max() > 0 for k in before)
