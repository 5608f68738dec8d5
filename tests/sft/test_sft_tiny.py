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


def interrupted_at_step_3(tmp_path, model_dir, monkeypatch, *overrides) -> None:
    """Run the recipe and kill it (Ctrl-C) after step 3: checkpoint-2 is on disk, the run marked interrupted."""
    class Interrupting(tracking.MetricsCallback, StopAtStep3):
        pass

    monkeypatch.setattr(tracking, "MetricsCallback", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        run(recipe(tmp_path, model_dir, *overrides))
    monkeypatch.undo()


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    interrupted_at_step_3(tmp_path, tiny_model_dir, monkeypatch)
    (first,) = runs.read_registry(tmp_path / "runs")["runs"]
    assert runs.Run(tmp_path / "runs" / first).status == "interrupted"
    resumed = run(recipe(tmp_path, tiny_model_dir))
    assert resumed.id == first and resumed.manifest["resumed_from"].endswith("checkpoint-2")
    assert resumed.manifest["status"] == "completed" and resumed.manifest["metrics"]["train_steps"] == 4


def test_changed_recipe_does_not_resume_someone_elses_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    interrupted_at_step_3(tmp_path, tiny_model_dir, monkeypatch)
    other = run(recipe(tmp_path, tiny_model_dir, "train.learning_rate=1e-4"))
    assert "resumed_from" not in other.manifest and len(runs.read_registry(tmp_path / "runs")["runs"]) == 2


def test_nan_loss_stops_and_marks_the_run_failed(tmp_path, tiny_model_dir):
    with pytest.raises(TrainingFailed, match="loss became"):
        run(recipe(tmp_path, tiny_model_dir, "train.learning_rate=1e30", "train.max_grad_norm=0",
                   "train.bf16=false"))
    (run_id,) = runs.read_registry(tmp_path / "runs")["runs"]
    run_dir = tmp_path / "runs" / run_id
    assert runs.Run(run_dir).status == "failed" and not (run_dir / "adapter").exists()


# ---------------------------------------------------------------- the lifecycle's contracts, on SFT

def test_manifest_holds_the_trl_config_the_trainer_saw(tmp_path, tiny_model_dir):
    """The manifest's trl_config is trainer.args as TRL holds it: our stage defaults, the recipe, this machine's
    precision and the run's own paths all applied (not just the YAML's keys)."""
    import dataclasses

    from alignkit import lifecycle
    from sft.train import STAGE

    seen = {}

    def capture(ctx):
        seen["trainer"] = STAGE.build_trainer(ctx)
        return seen["trainer"]

    result = lifecycle.run(dataclasses.replace(STAGE, build_trainer=capture), recipe(tmp_path, tiny_model_dir))
    m = result.manifest
    assert m["trl_config_class"] == "SFTConfig"
    assert m["trl_config"] == lifecycle.config_dict(seen["trainer"].args)
    config = m["trl_config"]
    assert config["padding_free"] is True and config["lr_scheduler_type"] == "cosine"  # stage defaults (not TRL's)
    assert config["max_steps"] == 4 and config["save_steps"] == 2  # the recipe's overrides
    assert config["bf16"] == lifecycle.precision_defaults()["bf16"]  # decided for this machine
    assert config["output_dir"] == str(result.path / "checkpoints") and config["run_name"] == result.id


def _fingerprint(r, st):
    from alignkit import lifecycle

    return lifecycle.fingerprint(st.name, r, {"data.jsonl": "sha"}, None, lifecycle.config_dict(lifecycle.resolve_config(st, r)))


def test_fingerprint_changes_with_a_stage_default_the_trl_version_or_the_precision(tmp_path, monkeypatch):
    """A run resumes (and the pipeline reuses one) only for the same work: the same recipe is other work when
    our default under `train:` changed, TRL was upgraded, or this machine decides bf16 differently."""
    import dataclasses

    from alignkit import lifecycle, runs
    from sft.train import STAGE

    r = recipe(tmp_path, "smollm2-135m-instruct")
    base = _fingerprint(r, STAGE)
    assert _fingerprint(r, STAGE) == base  # deterministic
    assert _fingerprint(r, dataclasses.replace(STAGE, defaults={**STAGE.defaults, "warmup_steps": 6})) != base
    assert _fingerprint(r, STAGE) == base
    assert _fingerprint(recipe(tmp_path / "elsewhere", "smollm2-135m-instruct"), STAGE) == base  # output.dir: same work

    versions = runs.library_versions()
    monkeypatch.setattr(runs, "library_versions", lambda: {**versions, "trl": "99.0"})
    assert _fingerprint(r, STAGE) != base
    monkeypatch.undo()

    bf16 = lifecycle.precision_defaults()["bf16"]
    monkeypatch.setattr(lifecycle, "precision_defaults", lambda: {"bf16": not bf16, "fp16": False, "use_cpu": True})
    assert _fingerprint(r, STAGE) != base


def test_resumed_run_losses_equal_the_uninterrupted_runs(tmp_path, tiny_model_dir, monkeypatch):
    """Killed after step 3 and resumed from checkpoint-2, the run logs the same losses at steps 3 and 4 as a run
    that was never interrupted: the resume restores weights, optimizer, scheduler, RNG and data order."""
    def losses(run):
        rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    whole = losses(run(recipe(tmp_path / "whole", tiny_model_dir, "train.eval_strategy=no")))
    interrupted_at_step_3(tmp_path / "resumed", tiny_model_dir, monkeypatch, "train.eval_strategy=no")
    resumed = run(recipe(tmp_path / "resumed", tiny_model_dir, "train.eval_strategy=no"))
    assert resumed.manifest["resumed_from"].endswith("checkpoint-2")
    again = losses(resumed)
    assert sorted(again) == sorted(whole) == [1, 2, 3, 4]
    assert [again[3], again[4]] == pytest.approx([whole[3], whole[4]], rel=1e-4, abs=1e-5)


def _parent_with_template(root, model_dir, template_sha):
    """A completed 'sft' run whose manifest says its adapter was trained under another chat template."""
    from alignkit import models
    from alignkit.recipe import ModelConfig

    tokenizer, _ = models.load_tokenizer(model_dir)
    parent = runs.start_run(root, "sft", {}, chat_template_sha256=template_sha,
                            base_model={"spec": model_dir, "id": models.canonical_id(model_dir)})
    models.save_adapter(models.attach_lora(models.load_model(ModelConfig(base=model_dir)), {"r": 4, "alpha": 8}),
                        tokenizer, parent.adapter_dir)
    parent.finish("completed")
    return parent


def test_sft_continuing_an_adapter_with_another_template_exits_2(tmp_path, tiny_model_dir, capsys):
    from alignkit.cli import stage_main
    from sft.train import STAGE

    parent = _parent_with_template(tmp_path / "runs", tiny_model_dir, "ab" * 32)
    code = stage_main("python -m sft", STAGE, argv=[
        "--config", str(ROOT / "recipes/smollm2/sft.yaml"), f"model.base={tiny_model_dir}",
        f"model.adapter={parent.adapter_dir}", f"output.dir={tmp_path / 'runs'}", "tracking.backend=none",
        "data.train=" + str(ROOT / "recipes/data/sft_demo.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "chat template mismatch: the parent sft run" in err and "abababab" in err
    assert "this sft run's tokenizer" in err and "Traceback" not in err
    assert list(runs.read_registry(tmp_path / "runs")["runs"]) == [parent.id]  # no run opened


@pytest.mark.parametrize("name", ["reward", "rlhf", "dpo", "kto"])
def test_every_stage_that_continues_an_adapter_checks_its_template(tmp_path, tiny_model_dir, name):
    """The lineage check is the lifecycle's, before any stage's own code: the same refusal for every stage."""
    from alignkit import lifecycle
    from alignkit.errors import UserError
    from alignkit.recipe import ModelConfig

    parent = _parent_with_template(tmp_path / "runs", tiny_model_dir, "cd" * 32)
    with pytest.raises(UserError, match=rf"chat template mismatch: .* this {name} run's tokenizer"):
        lifecycle.start(ModelConfig(base=tiny_model_dir, adapter=str(parent.adapter_dir)), name)


def test_help_config_lists_every_key_with_its_default_and_help(capsys):
    from alignkit.cli import build_parser

    args = build_parser().parse_args(["sft", "--help-config"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "data.train: 'recipes/data/sft_demo.jsonl'" in out  # the SFT recipe's own default, not DataConfig's
    assert "data.max_tokens: 1024\n    Drop records longer than this (tokens)." in out
    assert "output.resume: 'auto'" in out and "model.quantization: 'none'" in out
    assert "train.padding_free: True" in out  # our defaults under train:, which the recipe may override


def test_the_resolved_config_goes_to_the_wandb_config_too(tmp_path):
    from types import SimpleNamespace

    from trl import SFTConfig

    from alignkit import lifecycle

    class Config(dict):
        def update(self, values, allow_val_change=False):
            super().update(values)

    wb = SimpleNamespace(config=Config())
    run_ = runs.start_run(tmp_path, "sft", {})
    lifecycle.record_config(lifecycle.OpenRun(run_, None, None, wb), SFTConfig(output_dir=str(tmp_path), learning_rate=3e-4, use_cpu=True))
    assert run_.manifest["trl_config"]["learning_rate"] == 3e-4 == wb.config["trl_config"]["learning_rate"]
    assert run_.manifest["trl_config"] == wb.config["trl_config"] and run_.manifest["trl_config_class"] == "SFTConfig"


def test_loraplus_moves_the_b_matrices_ratio_times_as_far(tmp_path, tiny_model_dir):
    """lora.loraplus_lr_ratio (peft's LoRA+): after one AdamW step from B = 0 every B entry has moved by about
    the learning rate (Adam's first step is lr·g/|g|), so B's largest entry is `ratio` times the plain run's."""
    one_step = ("train.max_steps=1", "train.save_steps=1", "train.warmup_steps=0", "train.learning_rate=1e-3")
    plain = run(recipe(tmp_path / "plain", tiny_model_dir, *one_step))
    plus = run(recipe(tmp_path / "plus", tiny_model_dir, *one_step, "lora.loraplus_lr_ratio=16"))
    step = {name: max(float(b.abs().max()) for b in lora_b(r.adapter_dir).values()) for name, r in
            (("plain", plain), ("plus", plus))}
    assert step["plain"] == pytest.approx(1e-3, rel=0.05) and step["plus"] / step["plain"] == pytest.approx(16, rel=0.05)
    assert plus.manifest["recipe"]["lora"]["loraplus_lr_ratio"] == 16


@pytest.mark.parametrize("overrides, message", [
    (["lora.loraplus_lr_ratio=0.5"], "expected a number ≥ 1"),
    (["lora.loraplus_lr_ratio=16", "train.optim=adafactor"], "builds torch's AdamW, but train.optim is"),
])
def test_a_bad_loraplus_setting_is_one_clear_error(tmp_path, tiny_model_dir, overrides, message):
    from alignkit.errors import UserError

    with pytest.raises(UserError, match=message):
        run(recipe(tmp_path, tiny_model_dir, *overrides))
    registry = runs.read_registry(tmp_path / "runs") if (tmp_path / "runs" / "registry.json").exists() else {"runs": {}}
    assert not [r for r in registry["runs"].values() if r["status"] == "completed"]
