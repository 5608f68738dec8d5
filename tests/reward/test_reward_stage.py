"""Reward stage plumbing on the tiny random model: the score head survives save/load/merge, the gate is recorded
and enforced, and bad input ends in one clear message with exit code 2."""

from __future__ import annotations

import json
import shutil

import pytest

from alignkit.cli import stage_main
from alignkit.errors import UserError
from alignkit.reward_model import RewardScorer
from reward.config import RewardRecipe, RLHFRecipe
from reward.rlhf import run as rlhf_run
from reward.train import run as reward_run

PROMPTS = [[{"role": "user", "content": "How do I bake bread?"}]] * 3 + [[{"role": "user", "content": "Hi"}]]
REPLIES = ["Mix flour, water, salt and yeast; knead, rise, bake at 230 C.", "I can't help with that.", "Sure!", "Hello."]


def test_score_head_survives_save_load_and_merge(tiny_model_dir, tmp_path, seq_cls_lora):
    from alignkit import models

    model, tok = seq_cls_lora(tiny_model_dir)
    before = RewardScorer(model, tok).score(PROMPTS, REPLIES, batch_size=3)
    assert len(set(round(s, 4) for s in before)) > 1  # a trained-looking head, not a constant
    models.save_adapter(model, tok, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
    unmerged = RewardScorer.from_adapter(tmp_path / "adapter", tiny_model_dir, merge=False).score(PROMPTS, REPLIES)
    merged = RewardScorer.from_adapter(tmp_path / "adapter", tiny_model_dir, merge=True).score(PROMPTS, REPLIES, 2)
    assert unmerged == pytest.approx(before, abs=1e-5)
    assert merged == pytest.approx(before, rel=1e-3)  # W + BA folded in float32: rounding only

    # Without the saved head the scores would be random: such an adapter is refused, not silently used.
    config["modules_to_save"] = None
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="score head"):
        RewardScorer.from_adapter(tmp_path / "adapter", tiny_model_dir)


def test_reward_run_records_heldout_metrics_and_gate(tiny_reward_run):
    m = tiny_reward_run.manifest
    assert m["status"] == "completed" and m["stage"] == "reward"
    assert m["heldout"]["n"] == 35 and len(m["heldout"]["calibration"]) == 4
    assert m["metrics"]["reload_max_abs_diff"] < 1e-4
    config = m["trl_config"]  # what RewardTrainer trained with: our defaults, the recipe's overrides, TRL's own
    assert m["trl_config_class"] == "RewardConfig" and config["train_sampling_strategy"] == "group_by_length"
    assert config["max_steps"] == 2 and config["center_rewards_coefficient"] is None
    gate = m["reward_gate"]
    assert gate["passed"] is False and gate["alpha"] == 1e-6 and 0 <= gate["p_value"] <= 1
    assert (tiny_reward_run.path / "calibration.png").stat().st_size > 1000
    rows = [json.loads(line) for line in tiny_reward_run.metrics_path.read_text().splitlines()]
    assert any("heldout/accuracy" in r for r in rows) and any("loss" in r for r in rows)


def test_failed_gate_is_refused(tiny_reward_run, tiny_model_dir, capsys):
    with pytest.raises(UserError, match="failed its gate"):
        RewardScorer.load(tiny_reward_run.path)
    scorer = RewardScorer.load(tiny_reward_run.path / "adapter", allow_failed_gate=True)
    assert len(scorer.score(PROMPTS, REPLIES)) == 4
    code = stage_main("python -m reward.rlhf", RLHFRecipe, rlhf_run, [
        "--config", "recipes/smollm2/rlhf.yaml", f"model.base={tiny_model_dir}", "model.adapter=null",
        f"reward.model={tiny_reward_run.path}", "tracking.backend=none", "output.dir=unused"])
    assert code == 2 and "failed its gate" in capsys.readouterr().err


def test_too_few_heldout_pairs(tiny_model_dir, tmp_path, capsys, reward_args):
    code = stage_main("python -m reward", RewardRecipe, reward_run,
                      reward_args(tiny_model_dir, tmp_path, "data.val_fraction=0.02"))
    err = capsys.readouterr().err
    assert code == 2 and "held-out pairs" in err and "data.val_fraction" in err
    assert not list(tmp_path.glob("reward-*"))  # refused before a run was started


def test_reward_model_without_chat_template(tiny_reward_run, tiny_model_dir, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_reward_run.adapter_dir, adapter)  # an adapter alone: no manifest, no gate to check
    (adapter / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((adapter / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (adapter / "tokenizer_config.json").write_text(json.dumps(config))
    code = stage_main("python -m reward.rlhf", RLHFRecipe, rlhf_run, [
        "--config", "recipes/smollm2/rlhf.yaml", f"model.base={tiny_model_dir}", "model.adapter=null",
        f"reward.model={adapter}", "tracking.backend=none", f"output.dir={tmp_path}"])
    assert code == 2 and "no chat template" in capsys.readouterr().err


def test_reward_model_with_another_tokenizer_scores_policy_text(small_vocab_model_dir, tmp_path, seq_cls_lora):
    """A reward model whose vocabulary shares nothing with the policy's: the scorer re-renders text with its own."""
    from alignkit import models
    from reward.rlhf import load_reward

    model, rm_tok = seq_cls_lora(small_vocab_model_dir)
    models.save_adapter(model, rm_tok, tmp_path / "rm")

    recipe = RLHFRecipe(reward=RLHFRecipe().reward.__class__(model=str(tmp_path / "rm")))
    fn, info = load_reward(recipe)
    scores = fn(prompts=PROMPTS, completions=[[{"role": "assistant", "content": r}] for r in REPLIES])
    assert len(scores) == 4 and all(isinstance(s, float) for s in scores)
    assert len(set(scores)) > 1 and info["base"] == small_vocab_model_dir and info["gate"] is None


def test_recipe_evaluates_the_heldout_pairs_during_training(tiny_model_dir, tmp_path, reward_args):
    """reward.yaml evaluates at each epoch's end through the length-grouped sampler, which needs lengths for the
    held-out pairs too (the other tiny runs turn evaluation off)."""
    args = [a for a in reward_args(tiny_model_dir, tmp_path) if a != "train.eval_strategy='no'"]
    assert stage_main("python -m reward", RewardRecipe, reward_run, args + ["train.eval_strategy=steps",
                                                                             "train.eval_steps=2"]) == 0
    (path,) = tmp_path.glob("reward-*")
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_loss" in r for r in rows), rows


@pytest.mark.slow
@pytest.mark.timeout(2400)  # 12 steps: 363 s CPU; 24-30 min wall on 2 cores shared with 3 other engineers' runs
def test_reward_model_beats_chance_on_the_demo_pairs(tmp_path, reward_args):
    """The CPU recipe on the embedded model, cut to 12 steps (96 of the 195 training pairs): held-out pairwise
    accuracy above 0.5 on the 35 held-out pairs, measured with the saved-and-reloaded model."""
    args = reward_args("smollm2-135m-instruct", tmp_path, "train.max_steps=12", "data.near_dedup=true")
    args = [a for a in args if not a.startswith(("lora.", "train.per_device_train_batch_size"))]
    assert stage_main("python -m reward", RewardRecipe, reward_run, args) == 0
    (path,) = tmp_path.glob("reward-*")
    m = json.loads((path / "manifest.json").read_text())
    print("held-out:", {k: m["heldout"][k] for k in ("accuracy", "mean_margin", "n")}, "gate:", m["reward_gate"])
    assert m["heldout"]["n"] == 35 and m["heldout"]["accuracy"] > 0.5 and m["heldout"]["mean_margin"] > 0
    assert m["metrics"]["reload_max_abs_diff"] < 1e-4


def test_lora_layers_past_the_model_depth(tiny_model_dir, tmp_path, capsys, reward_args):
    """The CPU recipe's LoRA on layers 22-29 does not fit a 2-layer model: one clear line, exit 2."""
    args = [a for a in reward_args(tiny_model_dir, tmp_path) if a != "lora.layers_to_transform=null"]
    code = stage_main("python -m reward", RewardRecipe, reward_run, args)
    assert code == 2 and "lora: No modules were targeted" in capsys.readouterr().err
