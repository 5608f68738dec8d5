"""RLHF, top to bottom: reward (a gated reward model or a function) → prompts → run → policy = SFT adapter
(trainable; TRL keeps a frozen copy as the KL reference) → TRL RLOOTrainer or GRPOTrainer with a reward-hacking
guard → greedy replies scored before/after → adapter → manifest.

    alignkit rlhf --config recipes/smollm2/rlhf.yaml model.adapter=runs/demo/sft-…/adapter reward.model=runs/demo/reward-…
    python -m reward.rlhf --config …   (the same)
"""

from __future__ import annotations

import dataclasses
import importlib
import statistics
import sys
from typing import Any, Callable

from alignkit import models, stage
from alignkit.errors import TrainingFailed, UserError
from alignkit.generate import Sampling, chat
from alignkit.reward_model import RewardScorer
from alignkit.runs import Run
from reward.config import RLHF_DEFAULTS, RLHFRecipe
from reward.guard import RewardHackingGuard
from reward.prompts import load_prompts

TRAINERS = {"rloo": ("RLOOConfig", "RLOOTrainer"), "grpo": ("GRPOConfig", "GRPOTrainer")}


def load_reward(recipe: RLHFRecipe) -> tuple[Callable, dict[str, Any]]:
    """The reward function TRL calls, and what to record about it in the manifest."""
    src = recipe.reward
    if src.function:
        module, _, name = src.function.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise UserError(f"reward.function: cannot import '{src.function}' ({e}); expected 'module:function'") \
                from None
        return fn, {"function": src.function}
    scorer = RewardScorer.load(src.model, allow_failed_gate=src.allow_failed_gate)

    def reward_model(prompts, completions, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return scorer.score(prompts, texts, batch_size=src.batch_size)

    return reward_model, {"model": src.model, "base": scorer.info.get("base"), "gate": scorer.info.get("gate"),
                          "run": scorer.info.get("run"), "allow_failed_gate": src.allow_failed_gate,
                          "tokenizer_sha256": models.template_sha256(scorer.tokenizer)}


def trl_classes(algorithm: str, train: dict):
    """(config class, trainer class) of the algorithm, refusing `train:` keys that class does not take."""
    import trl

    config_name, trainer_name = TRAINERS[algorithm]
    config_cls = getattr(trl, config_name)
    valid = {f.name for f in dataclasses.fields(config_cls)}
    bad = [k for k in train if k not in valid]
    if bad:
        raise UserError(f"train: {', '.join(map(repr, bad))} is not a {config_name} field (rlhf.algorithm="
                        f"{algorithm}); remove it or switch rlhf.algorithm")
    return config_cls, getattr(trl, trainer_name)


def mean_reward(model, tokenizer, reward_fn: Callable, prompts: list, max_new_tokens: int) -> float | None:
    """Mean reward of greedy replies to `prompts` (None for no prompts)."""
    if not prompts:
        return None
    was_training = model.training
    model.eval()
    replies = chat(model, tokenizer, prompts, Sampling(max_new_tokens=max_new_tokens), batch_size=16)
    model.train(was_training)
    # TRL's reward signature; ids re-tokenized from the text (generation stopped at EOS, which decode dropped).
    ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in replies]
    scores = reward_fn(prompts=prompts, completions=[[{"role": "assistant", "content": r}] for r in replies],
                       completion_ids=ids)
    return statistics.fmean(float(s) for s in scores)


def run(recipe: RLHFRecipe) -> Run:
    """RLOO (or GRPO) of the SFT adapter against the reward; fails the run on reward-hacking symptoms."""
    from datasets import Dataset

    cfg = recipe.rlhf
    config_cls, trainer_cls = trl_classes(cfg.algorithm, recipe.train)
    beta = recipe.train.get("beta", RLHF_DEFAULTS["beta"])
    if cfg.kl_ceiling is not None and not beta:
        raise UserError("rlhf.kl_ceiling is set but train.beta is 0: without a reference model TRL does not measure "
                        "KL, so the ceiling could not be enforced (set train.beta > 0 or rlhf.kl_ceiling: null)")
    tokenizer, template_sha, parent = stage.start(recipe.model)
    saved_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues the right end
    reward_fn, reward_info = load_reward(recipe)
    prompts = load_prompts(recipe.data, tokenizer, cfg.max_prompts)
    print(f"prompts: {prompts.report}")
    train_prompts = prompts.splits["train"]

    opened = stage.open_run(recipe, "rlhf", inputs={**prompts.sha256s, "reward": str(reward_info)}, parent=parent,
                            extra={**stage.model_manifest(recipe.model, template_sha), "algorithm": cfg.algorithm,
                                   "reward": reward_info, "data": {"sha256": prompts.sha256s, "prompts": prompts.report}})
    with stage.guard(opened):
        policy = models.load_model(recipe.model)
        args = stage.trl_args(config_cls, recipe.train, opened, recipe.tracking, RLHF_DEFAULTS)
        if recipe.model.adapter:  # TRL copies it to a frozen "ref" adapter: the KL reference is the SFT policy
            policy = models.load_adapter(policy, recipe.model.adapter, trainable=True)
        else:  # a fresh LoRA: with adapters disabled the reference is the base model
            policy = models.attach_lora(policy, recipe.lora, gradient_checkpointing=args.activation_checkpointing)
        probe = train_prompts[:cfg.eval_prompts]
        before = mean_reward(policy, tokenizer, reward_fn, probe, args.max_completion_length)
        guard = RewardHackingGuard(cfg.kl_ceiling, cfg.min_mean_length, cfg.max_clipped_ratio, cfg.patience)
        trainer = stage.build_trainer(trainer_cls, model=policy, reward_funcs=[reward_fn], args=args,
                                      train_dataset=Dataset.from_list([{"prompt": p} for p in train_prompts]),
                                      processing_class=tokenizer, callbacks=[opened.metrics, guard])
        result = trainer.train(resume_from_checkpoint=opened.resume_from)
        stage.check_finite(opened)
        logged = [row for row in _rows(opened) if "reward" in row]
        if guard.tripped:
            opened.run.update(guard={"reason": guard.reason, "step": guard.step, "notes": guard.notes})
            raise TrainingFailed(f"reward hacking at step {guard.step}: {guard.reason}; the run is marked failed "
                                 "and no adapter is saved")
        model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
        if "ref" in model.peft_config:  # the frozen reference copy is TRL's, not part of the result
            model.delete_adapter("ref")
        model.set_adapter("default")
        after = mean_reward(model, tokenizer, reward_fn, probe, args.max_completion_length)
        tokenizer.padding_side = saved_side  # the adapter's tokenizer as the SFT stage saved it
        models.save_adapter(model, tokenizer, opened.run.adapter_dir)
        summary = {
            "train_steps": result.global_step, "train_loss": result.training_loss,
            "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 1),
            "reward_first": logged[0]["reward"] if logged else None,
            "reward_last": logged[-1]["reward"] if logged else None,
            "kl_last": logged[-1].get("kl") if logged else None,
            "mean_length_last": logged[-1].get("completions/mean_length") if logged else None,
            "greedy_reward_before": before, "greedy_reward_after": after, "greedy_reward_prompts": len(probe),
        }
        if before is not None:
            print(f"mean reward of greedy replies to {len(probe)} training prompts: {before:.4f} → {after:.4f}")
        return stage.close_run(opened, summary, guard={"reason": None, "notes": guard.notes})


def _rows(opened) -> list[dict]:
    import json

    path = opened.run.metrics_path
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


if __name__ == "__main__":
    from alignkit.entry import stage_main

    sys.exit(stage_main("python -m reward.rlhf", RLHFRecipe, run))
