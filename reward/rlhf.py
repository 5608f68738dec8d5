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

from alignkit import distributed, lifecycle, models
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


def trl_config(recipe: RLHFRecipe) -> str:
    """RLOOConfig or GRPOConfig by rlhf.algorithm, refusing what either cannot do before anything loads."""
    config_cls, _ = trl_classes(recipe.rlhf.algorithm, recipe.train)
    beta = recipe.train.get("beta", RLHF_DEFAULTS["beta"])
    if recipe.rlhf.kl_ceiling is not None and not beta:
        raise UserError("rlhf.kl_ceiling is set but train.beta is 0: without a reference model TRL does not measure "
                        "KL, so the ceiling could not be enforced (set train.beta > 0 or rlhf.kl_ceiling: null)")
    return config_cls.__name__


def load_data(recipe: RLHFRecipe, tokenizer) -> lifecycle.Data:
    """The reward function and the training prompts (the reward source is an input: it is fingerprinted)."""
    trl_config(recipe)
    reward_fn, reward_info = load_reward(recipe)
    prompts = load_prompts(recipe.data, tokenizer, recipe.rlhf.max_prompts)
    print(f"prompts: {prompts.report}")
    train_prompts = prompts.splits["train"]
    from datasets import Dataset

    return lifecycle.Data(inputs={**prompts.sha256s, "reward": str(reward_info)},
                      train=Dataset.from_list([{"prompt": p} for p in train_prompts]),
                      extra={"reward_fn": reward_fn, "probe": train_prompts[:recipe.rlhf.eval_prompts]},
                      fields={"algorithm": recipe.rlhf.algorithm, "reward": reward_info,
                              "data": {"sha256": prompts.sha256s, "prompts": prompts.report}})


def build_trainer(ctx: lifecycle.Context):
    """The SFT adapter, trainable (TRL keeps a frozen copy "ref": the KL reference is the SFT policy), or a new
    LoRA (the reference is then the base), under RLOOTrainer or GRPOTrainer with the reward-hacking guard."""
    recipe, cfg, tokenizer = ctx.recipe, ctx.recipe.rlhf, ctx.tokenizer
    _, trainer_cls = trl_classes(cfg.algorithm, recipe.train)
    # generation continues the right end; finish() restores the side before saving the tokenizer
    ctx.data.extra["padding_side"], tokenizer.padding_side = tokenizer.padding_side, "left"
    policy = models.load_model(recipe.model)
    if recipe.model.adapter:
        policy = models.load_adapter(policy, recipe.model.adapter, trainable=True)
    else:
        policy = models.attach_lora(policy, recipe.lora, gradient_checkpointing=ctx.args.activation_checkpointing)
    reward_fn, probe = ctx.data.extra["reward_fn"], ctx.data.extra["probe"]
    ctx.summary["greedy_reward_before"] = distributed.on_main(  # one measurement per run, by rank 0
        lambda: mean_reward(policy, tokenizer, reward_fn, probe, ctx.args.max_completion_length))
    guard = RewardHackingGuard(cfg.kl_ceiling, cfg.min_mean_length, cfg.max_clipped_ratio, cfg.patience)
    ctx.data.extra["guard"] = guard
    return lifecycle.build_trainer(trainer_cls, model=policy, reward_funcs=[reward_fn], args=ctx.args,
                               train_dataset=ctx.data.train, processing_class=tokenizer,
                               callbacks=ctx.callbacks + [guard], lora=ctx.recipe.lora)


def finish(ctx: lifecycle.Context, trainer, result) -> None:
    """Fail on a reward-hacking symptom (no adapter saved); else the policy alone saved, its greedy replies scored."""
    guard, tokenizer = ctx.data.extra["guard"], ctx.tokenizer
    logged = [row for row in _rows(ctx.run) if "reward" in row]
    if guard.tripped:
        ctx.run.update(guard={"reason": guard.reason, "step": guard.step, "notes": guard.notes})
        raise TrainingFailed(f"reward hacking at step {guard.step}: {guard.reason}; the run is marked failed "
                             "and no adapter is saved")
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    if "ref" in model.peft_config:  # the frozen reference copy is TRL's, not part of the result
        model.delete_adapter("ref")
    model.set_adapter("default")
    probe, before = ctx.data.extra["probe"], ctx.summary.pop("greedy_reward_before")
    after = distributed.on_main(
        lambda: mean_reward(model, tokenizer, ctx.data.extra["reward_fn"], probe, ctx.args.max_completion_length))
    tokenizer.padding_side = ctx.data.extra["padding_side"]  # the adapter's tokenizer as the SFT stage saved it
    lifecycle.save_adapter(ctx, model)
    ctx.summary.update({
        "reward_first": logged[0]["reward"] if logged else None,
        "reward_last": logged[-1]["reward"] if logged else None,
        "kl_last": logged[-1].get("kl") if logged else None,
        "mean_length_last": logged[-1].get("completions/mean_length") if logged else None,
        "greedy_reward_before": before, "greedy_reward_after": after, "greedy_reward_prompts": len(probe),
    })
    ctx.fields["guard"] = {"reason": None, "notes": guard.notes}
    if before is not None and distributed.is_main():
        print(f"mean reward of greedy replies to {len(probe)} training prompts: {before:.4f} → {after:.4f}")


STAGE = lifecycle.Stage(name="rlhf", recipe=RLHFRecipe, trl_config=trl_config, defaults=RLHF_DEFAULTS,
                    consumes=("prompts", "adapter", "reward_model"), produces="adapter", load_data=load_data,
                    build_trainer=build_trainer, finish=finish)


def run(recipe: RLHFRecipe) -> Run:
    """RLOO (or GRPO) of the SFT adapter against the reward; fails the run on reward-hacking symptoms."""
    return lifecycle.run(STAGE, recipe)


def _rows(run: Run) -> list[dict]:
    import json

    path = run.metrics_path
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


if __name__ == "__main__":
    from alignkit.cli import main

    main(["rlhf", *sys.argv[1:]])
