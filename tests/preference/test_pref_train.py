"""The DPO and KTO stages end to end on a tiny random model: continuation of the parent, metrics, contracts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pref_helpers import make_parent

import preference.train as train
from alignkit import runs
from alignkit.errors import TrainingFailed, UserError
from alignkit.recipe import load_recipe
from preference.config import DPORecipe, KTORecipe
from preference.reference import check_reference

ROOT = Path(__file__).resolve().parents[2]


def recipe(name, cls, model_dir, pairs_file, out, *overrides):
    return load_recipe(ROOT / f"recipes/smollm2/{name}.yaml", cls, [
        f"model.base={model_dir}", f"data.train={pairs_file}", "data.val_fraction=0.3", "data.near_dedup=false",
        f"output.dir={out}", "tracking.backend=none", "train.max_steps=4", "train.eval_steps=2",
        "train.save_steps=2", "train.logging_steps=1", "train.learning_rate=5e-3", *overrides])


def lora_weights(adapter_dir):
    from safetensors.torch import load_file

    return load_file(Path(adapter_dir) / "adapter_model.safetensors")


def registry_entry(run):
    return runs.read_registry(run.root)["runs"][run.id]


def test_dpo_continues_the_sft_adapter_and_records_held_out_metrics(sft_parent, tiny_model_dir, pairs_file):
    result = train.run(recipe("dpo", DPORecipe, tiny_model_dir, pairs_file, sft_parent.root,
                              f"model.adapter={sft_parent.adapter_dir}"))
    m = result.manifest
    assert m["status"] == "completed" and m["stage"] == "dpo" and m["parent"] == sft_parent.id
    assert m["chat_template_sha256"] == sft_parent.manifest["chat_template_sha256"]
    assert m["reference_check"]["passed"] and m["reference_check"]["max_abs_implicit_reward"] <= 1e-4
    assert {"eval_preference_accuracy", "eval_reward_margin", "eval_loss", "train_loss"} <= set(m["metrics"])
    assert m["best_checkpoint"]["metric"] == "eval_rewards/accuracies"
    assert m["trl_config_class"] == "DPOConfig" and m["trl_config"]["warmup_steps"] == 2  # the stage default
    assert m["trl_config"]["max_steps"] == 4  # the test's override of dpo.yaml
    assert Path(m["best_checkpoint"]["checkpoint"]).name in ("checkpoint-2", "checkpoint-4")
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    evals = [r for r in rows if "eval_rewards/accuracies" in r]
    assert len(evals) >= 2 and all("eval_rewards/margins" in r for r in evals)
    before, after = lora_weights(sft_parent.adapter_dir), lora_weights(result.adapter_dir)
    assert set(before) == set(after)  # the same adapter continued, not a new one (and no "ref" copy saved)
    assert any((before[k] - after[k]).abs().max() > 0 for k in before)
    assert registry_entry(sft_parent)["status"] == "completed"


def test_kto_runs_on_pairs_split_into_thumbs(sft_parent, tiny_model_dir, pairs_file):
    result = train.run_kto(recipe("kto", KTORecipe, tiny_model_dir, pairs_file, sft_parent.root,
                                  f"model.adapter={sft_parent.adapter_dir}"))
    m = result.manifest
    assert m["status"] == "completed" and m["stage"] == "kto" and m["parent"] == sft_parent.id
    assert m["reference_check"]["passed"] and "eval_reward_margin" in m["metrics"]
    assert m["trl_config_class"] == "KTOConfig" and m["trl_config"]["metric_for_best_model"] == "eval_rewards/margins"


def test_template_mismatch_names_both_hashes_and_leaves_the_parent_alone(tmp_path, tiny_model_dir, pairs_file):
    parent = make_parent(tmp_path / "runs", tiny_model_dir, template_sha="ab" * 32)
    before = registry_entry(parent)
    with pytest.raises(UserError, match=r"chat template mismatch: the parent sft run .* abababab.*this dpo run's"):
        train.run(recipe("dpo", DPORecipe, tiny_model_dir, pairs_file, parent.root, f"model.adapter={parent.adapter_dir}"))
    assert registry_entry(parent) == before and list(runs.read_registry(parent.root)["runs"]) == [parent.id]


def test_adapter_for_another_base_is_refused(sft_parent, pairs_file):
    with pytest.raises(UserError, match="adapter was trained on .* but model.base is 'smollm2-135m-instruct'"):
        train.run(recipe("dpo", DPORecipe, "smollm2-135m-instruct", pairs_file, sft_parent.root,
                         f"model.adapter={sft_parent.adapter_dir}"))
    assert list(runs.read_registry(sft_parent.root)["runs"]) == [sft_parent.id]


def test_failed_reference_check_fails_the_run_not_the_parent(sft_parent, tiny_model_dir, pairs_file, monkeypatch):
    def against_bare_base(trainer, *args):
        trainer.model.delete_adapter("ref")  # TRL then scores the reference with adapters disabled
        trainer.precompute_ref_logps = False
        return check_reference(trainer, *args)

    monkeypatch.setattr(train, "check_reference", against_bare_base)
    before = registry_entry(sft_parent)
    with pytest.raises(TrainingFailed, match="step-0 reference check failed"):
        train.run(recipe("dpo", DPORecipe, tiny_model_dir, pairs_file, sft_parent.root,
                         f"model.adapter={sft_parent.adapter_dir}"))
    reg = runs.read_registry(sft_parent.root)["runs"]
    (failed,) = [k for k in reg if k != sft_parent.id]
    assert reg[failed]["status"] == "failed" and reg[failed]["parent"] == sft_parent.id
    assert registry_entry(sft_parent) == before


@pytest.mark.parametrize("name, stage_name", [("dpo", "dpo"), ("ipo", "dpo"), ("robust-dpo", "dpo"), ("kto", "kto")])
def test_bundled_recipes_resolve_to_what_the_file_says_over_the_stage_defaults(name, stage_name):
    """Each bundled preference recipe's resolved TRL config holds every `train:` value of its file, and our stage
    default wherever the file is silent (not the tuned demo values themselves: those may change)."""
    import yaml

    from alignkit import lifecycle
    from alignkit.cli import stage as stage_of

    st = stage_of(stage_name)
    path = ROOT / f"recipes/smollm2/{name}.yaml"
    args = lifecycle.resolve_config(st, load_recipe(path, st.recipe))
    written = yaml.safe_load(path.read_text())["train"]
    for key, value in {**st.defaults, **written}.items():
        got = getattr(args, key)
        assert (got.value if hasattr(got, "value") else got) == value, (name, key, got)  # enums compare by value


def test_unknown_train_key_names_the_file_and_the_nearest_dpo_option():
    with pytest.raises(UserError, match=r"dpo.yaml.*unknown key 'train.bta'.*'beta'"):
        load_recipe(ROOT / "recipes/smollm2/dpo.yaml", DPORecipe, ["train.bta=0.2"])


def test_opening_collator_keeps_the_prompt_and_the_first_reply_tokens_only():
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    collate = train.OpeningCollator(DataCollatorForPreference(pad_token_id=0), tokens=2)
    batch = collate([{"prompt_ids": [5, 6, 7], "chosen_ids": [11, 12, 13, 2], "rejected_ids": [21, 2]},
                     {"prompt_ids": [8], "chosen_ids": [31], "rejected_ids": [41, 42, 43, 2]}])
    # TRL's order: every chosen sequence, then every rejected one; the end-of-turn (2) is cut with the rest
    assert batch["input_ids"].tolist() == [[5, 6, 7, 11, 12], [8, 31, 0, 0, 0], [5, 6, 7, 21, 2], [8, 41, 42, 0, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 1, 0, 0, 0], [0, 0, 0, 1, 1], [0, 1, 1, 0, 0]]
    assert batch["attention_mask"].sum(1).tolist() == [5, 2, 5, 3]


def test_dpo_on_reply_openings_trains_and_scores_only_them(sft_parent, tiny_model_dir, pairs_file):
    parent = registry_entry(sft_parent)

    def tokens_seen(*overrides):
        result = train.run(recipe("dpo", DPORecipe, tiny_model_dir, pairs_file, sft_parent.root,
                                  f"model.adapter={sft_parent.adapter_dir}", "train.precompute_ref_log_probs=false",
                                  *overrides))
        assert result.manifest["status"] == "completed" and result.manifest["reference_check"]["passed"]
        rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
        return max(r["num_tokens"] for r in rows if "num_tokens" in r)  # every token the 4 steps trained on

    whole, opening = tokens_seen(), tokens_seen("pairs.opening_tokens=3")
    # the same 4 steps of 4 pairs (32 sequences), each reply cut to 3 tokens: at least 32 × (1 + 1) fewer
    # (the fixture's replies are ≥ 5 tokens with their end-of-turn)
    assert 0 < opening <= whole - 64
    assert registry_entry(sft_parent) == parent


@pytest.mark.parametrize("stage, extra, message", [
    ("dpo", ["train.precompute_ref_log_probs=true"], "opening_tokens needs train.precompute_ref_log_probs: false"),
    ("kto", ["train.precompute_ref_log_probs=false"], "opening_tokens: DPO only")])
def test_opening_tokens_where_they_cannot_apply_stop_before_training(stage, extra, message, sft_parent, tiny_model_dir,
                                                                     pairs_file):
    cls, run = (DPORecipe, train.run) if stage == "dpo" else (KTORecipe, train.run_kto)
    with pytest.raises(UserError, match=message):
        run(recipe(stage, cls, tiny_model_dir, pairs_file, sft_parent.root, f"model.adapter={sft_parent.adapter_dir}",
                   "pairs.opening_tokens=4", *extra))
    added = {k: e["status"] for k, e in runs.read_registry(sft_parent.root)["runs"].items() if k != sft_parent.id}
    assert "completed" not in added.values()


def test_opening_tokens_below_one_name_the_key():
    with pytest.raises(UserError, match="opening_tokens"):
        load_recipe(ROOT / "recipes/smollm2/dpo.yaml", DPORecipe, ["pairs.opening_tokens=0"])


def test_dpo_with_loraplus_continues_the_adapter_with_b_at_ratio_times_the_rate(sft_parent, tiny_model_dir, pairs_file,
                                                                               monkeypatch):
    """lora.loraplus_lr_ratio applies when DPO continues an adapter: only its trainable matrices are in the
    optimizer (the frozen reference is not), B's groups at 16x the rate; the step-0 check still passes."""
    from alignkit import models

    built = []
    real = models.loraplus_optimizer
    monkeypatch.setattr(models, "loraplus_optimizer", lambda *a: built.append(real(*a)) or built[-1])
    result = train.run(recipe("dpo", DPORecipe, tiny_model_dir, pairs_file, sft_parent.root,
                              f"model.adapter={sft_parent.adapter_dir}", "lora.loraplus_lr_ratio=16",
                              "train.max_steps=2", "train.eval_steps=2", "train.save_steps=2"))
    assert result.manifest["status"] == "completed" and result.manifest["reference_check"]["passed"]
    (optimizer,) = built
    rates = sorted({g["initial_lr"] for g in optimizer.param_groups if g["params"]})
    assert rates == [5e-3, 16 * 5e-3]
    trained = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert trained == sum(v.numel() for v in lora_weights(sft_parent.adapter_dir).values())
