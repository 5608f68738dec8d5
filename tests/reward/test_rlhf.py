"""RLHF through the real stage code (TRL RLOOTrainer/GRPOTrainer, guard, manifest); test-only reward functions
stand in for a learned reward model where its few-step noise would hide the effect under test."""

from __future__ import annotations

import json

import pytest

from alignkit.cli import stage_main
from alignkit.runs import Run
from reward.config import RLHFRecipe
from reward.rlhf import run as rlhf_run


def rlhf_args(base: str, out, reward: str, *extra: str) -> list[str]:
    return ["--config", "recipes/smollm2/rlhf.yaml", f"model.base={base}", "model.adapter=null", "lora.r=4",
            "lora.alpha=8", "reward.model=null", f"reward.function={reward}", "data.near_dedup=false",
            "tracking.backend=none", f"output.dir={out}", "train.save_strategy='no'", *extra]


def _only_run(out) -> Run:
    (path,) = [p for p in out.iterdir() if p.name.startswith("rlhf-")]
    return Run(path)


def test_kl_ceiling_stops_and_fails_the_run(tiny_model_dir, tmp_path, rewards_module, capsys):
    """Random rewards and a huge learning rate move the policy at once; a 1e-6 KL ceiling must stop it at step 2
    (step 1's KL is 0: the policy still equals its reference) and fail the run without saving an adapter."""
    code = stage_main("python -m reward.rlhf", RLHFRecipe, rlhf_run, rlhf_args(
        tiny_model_dir, tmp_path, f"{rewards_module}:noise", "rlhf.kl_ceiling=0.000001", "rlhf.patience=1",
        "rlhf.eval_prompts=0", "rlhf.max_prompts=8", "train.max_steps=6", "train.learning_rate=0.05",
        "train.max_completion_length=8", "train.num_generations=2", "train.per_device_train_batch_size=4"))
    assert code == 1 and "KL to the starting policy" in capsys.readouterr().err
    run = _only_run(tmp_path)
    m = run.manifest
    assert m["status"] == "failed" and "rlhf.kl_ceiling" in m["guard"]["reason"]
    assert 2 <= m["guard"]["step"] < 6 and not run.adapter_dir.exists()
    rows = [r for r in map(json.loads, run.metrics_path.read_text().splitlines()) if "kl" in r]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[-1]["kl"] > 1e-6
    for key in ("reward", "reward_std", "completions/mean_length", "completions/clipped_ratio"):
        assert key in rows[0]


def test_beta_zero_with_a_kl_ceiling_is_refused(tiny_model_dir, tmp_path, rewards_module, capsys):
    code = stage_main("python -m reward.rlhf", RLHFRecipe, rlhf_run, rlhf_args(
        tiny_model_dir, tmp_path, f"{rewards_module}:noise", "train.beta=0"))
    assert code == 2 and "train.beta is 0" in capsys.readouterr().err


def test_train_key_of_the_other_algorithm_is_refused(tiny_model_dir, tmp_path, rewards_module, capsys):
    code = stage_main("python -m reward.rlhf", RLHFRecipe, rlhf_run, rlhf_args(
        tiny_model_dir, tmp_path, f"{rewards_module}:noise", "train.scale_rewards=group"))
    assert code == 2 and "'scale_rewards' is not a RLOOConfig field" in capsys.readouterr().err


def test_rloo_raises_mean_reward_on_the_training_prompts(small_vocab_model_dir, tmp_path, rewards_module):
    """RLOO against a deterministic reward (share of words that are "bread") on a 1-layer model with a ~40-word
    vocabulary: the mean sampled reward of the last 2 steps beats the first 2, and greedy replies to the training
    prompts score higher after training than before. The saved adapter is the policy alone."""
    (tmp_path / "prompts.jsonl").write_text("".join(
        '{"prompt": "%s"}\n' % p for p in ["how do i bake bread", "make tea", "fix a bike", "what is python"]))
    code = stage_main("python -m reward.rlhf", RLHFRecipe, rlhf_run, rlhf_args(
        small_vocab_model_dir, tmp_path, f"{rewards_module}:bread", f"data.train={tmp_path / 'prompts.jsonl'}",
        "data.val_fraction=0", "data.min_tokens=1", "rlhf.eval_prompts=4", "rlhf.kl_ceiling=null",
        "rlhf.max_clipped_ratio=null", "train.max_steps=10", "train.learning_rate=0.1", "train.beta=0.01", "lora.r=8",
        "train.max_completion_length=8", "train.num_generations=4", "train.per_device_train_batch_size=8"))
    assert code == 0
    run = _only_run(tmp_path)
    rows = [r for r in map(json.loads, run.metrics_path.read_text().splitlines()) if "reward" in r]
    first, last = [r["reward"] for r in rows[:2]], [r["reward"] for r in rows[-2:]]
    assert sum(last) / 2 > sum(first) / 2 + 0.1, (first, last)
    metrics = run.manifest["metrics"]
    assert metrics["greedy_reward_after"] > metrics["greedy_reward_before"], metrics
    config = json.loads((run.adapter_dir / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and not (run.adapter_dir / "ref").exists()
    assert run.manifest["status"] == "completed"


def test_grpo_completes_and_saves_the_policy_alone(tiny_model_dir, tmp_path, rewards_module):
    """GRPO through the same stage: completes, logs KL to the reference, saves only the trained adapter."""
    code = stage_main("python -m reward.rlhf", RLHFRecipe, rlhf_run, rlhf_args(
        tiny_model_dir, tmp_path, f"{rewards_module}:noise", "rlhf.algorithm=grpo", "rlhf.eval_prompts=2",
        "rlhf.max_prompts=4", "rlhf.kl_ceiling=null", "train.max_steps=2", "train.max_completion_length=8",
        "train.num_generations=2", "train.per_device_train_batch_size=4", "train.scale_rewards=group"))
    assert code == 0
    run = _only_run(tmp_path)
    m = run.manifest
    assert m["status"] == "completed" and m["algorithm"] == "grpo" and m["metrics"]["train_steps"] == 2
    assert m["metrics"]["greedy_reward_prompts"] == 2 and m["reward"] == {"function": f"{rewards_module}:noise"}
    assert m["trl_config_class"] == "GRPOConfig" and m["trl_config"]["scale_rewards"] == "group"
    assert m["trl_config"]["beta"] == 0.05 and m["trl_config"]["disable_dropout"] is True  # the stage's defaults
    config = json.loads((run.adapter_dir / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and not (run.adapter_dir / "ref").exists()
    rows = [r for r in map(json.loads, run.metrics_path.read_text().splitlines()) if "kl" in r]
    assert len(rows) == 2
