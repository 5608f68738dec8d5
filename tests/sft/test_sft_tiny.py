"""The SFT stage end to end on a tiny random model: adapter, manifest, metrics, registry, resume, NaN stop."""

import json
from pathlib import Path

import pytest
from transformers import TrainerCallback

from alignkit import runs, tracking
from alignkit.errors import TrainingFailed
from alignkit.recipe import load_recipe
from sft.config import SFTRecipe
from sft.train import run

ROOT = Path(__file__).resolve().parents[2]
MANIFEST_KEYS = {"stage", "run_id", "parent", "status", "started", "finished", "wall_time_s", "recipe", "versions",
                 "base_model", "chat_template_sha256", "data", "fingerprint", "metrics", "inputs"}


def recipe(tmp_path, model_dir, *overrides):
    return load_recipe(ROOT / "recipes/smollm2/sft.yaml", SFTRecipe, [
        f"model.base={model_dir}", "data.train=" + str(ROOT / "recipes/data/sft_demo.jsonl"),
        f"output.dir={tmp_path / 'runs'}", "train.max_steps=4", "train.per_device_train_batch_size=4",
        "train.logging_steps=1", "train.save_steps=2", "tracking.backend=none", *overrides])


def lora_b(adapter_dir):
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(adapter_dir / "adapter_model.safetensors").items() if "lora_B" in k}


def test_sft_writes_adapter_manifest_metrics_and_registry(tmp_path, tiny_model_dir):
    result = run(recipe(tmp_path, tiny_model_dir, "tracking.backend=wandb"))
    manifest = result.manifest
    assert MANIFEST_KEYS <= set(manifest) and manifest["status"] == "completed"
    assert manifest["data"]["sha256"] and manifest["data"]["curation"]["splits"]["val"] > 0
    assert manifest["wandb"]["mode"] == "offline" and list((result.path / "wandb").glob("offline-run-*"))
    assert any(v.abs().sum() > 0 for v in lora_b(result.adapter_dir).values())  # LoRA B starts at zero
    assert (result.adapter_dir / "tokenizer.json").is_file()
    rows = [json.loads(l) for l in result.metrics_path.read_text().splitlines()]
    assert any("loss" in r for r in rows) and any("eval_loss" in r for r in rows)
    assert runs.read_registry(tmp_path / "runs")["runs"][result.id]["status"] == "completed"


class StopAtStep3(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    class Interrupting(tracking.MetricsCallback, StopAtStep3):
        pass

    monkeypatch.setattr(tracking, "MetricsCallback", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        run(recipe(tmp_path, tiny_model_dir))
    monkeypatch.undo()
    (first,) = runs.read_registry(tmp_path / "runs")["runs"]
    assert runs.Run(tmp_path / "runs" / first).status == "interrupted"
    resumed = run(recipe(tmp_path, tiny_model_dir))
    assert resumed.id == first and resumed.manifest["resumed_from"].endswith("checkpoint-2")
    assert resumed.manifest["status"] == "completed" and resumed.manifest["metrics"]["train_steps"] == 4


def test_changed_recipe_does_not_resume_someone_elses_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    class Interrupting(tracking.MetricsCallback, StopAtStep3):
        pass

    monkeypatch.setattr(tracking, "MetricsCallback", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        run(recipe(tmp_path, tiny_model_dir))
    monkeypatch.undo()
    other = run(recipe(tmp_path, tiny_model_dir, "train.learning_rate=1e-4"))
    assert "resumed_from" not in other.manifest and len(runs.read_registry(tmp_path / "runs")["runs"]) == 2


def test_nan_loss_stops_and_marks_the_run_failed(tmp_path, tiny_model_dir):
    with pytest.raises(TrainingFailed, match="loss became"):
        run(recipe(tmp_path, tiny_model_dir, "train.learning_rate=1e30", "train.max_grad_norm=0",
                   "train.bf16=false"))
    (run_id,) = runs.read_registry(tmp_path / "runs")["runs"]
    run_dir = tmp_path / "runs" / run_id
    assert runs.Run(run_dir).status == "failed" and not (run_dir / "adapter").exists()
