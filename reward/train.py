"""Reward model, top to bottom: pairs → seq-cls model + LoRA (+ score head) → TRL RewardTrainer → adapter →
held-out accuracy, margin, calibration with the saved model → gate. The lifecycle around it (tokenizer, lineage,
resolved TRL config, run, manifest) is `alignkit.lifecycle.run`; `STAGE` is what it needs to know."""

from __future__ import annotations

import shutil

from alignkit import distributed, lifecycle, models
from alignkit.errors import TrainingFailed, UserError
from alignkit.pairs import load_pairs, to_preference_dataset
from alignkit.reward_model import SFT_INIT_DIR, RewardScorer, merge_into_seq_cls
from alignkit.runs import Run
from reward import metrics
from reward.config import REWARD_DEFAULTS, RewardRecipe

# Scores of the in-memory model and of the saved-and-reloaded (merged) one may differ by float rounding only.
RELOAD_TOLERANCE = 1e-4


def heldout_pairs(prepared, recipe: RewardRecipe) -> list:
    """The val + test pairs, refusing too few for the gate's binomial test to mean anything."""
    heldout = prepared.splits.get("val", []) + prepared.splits.get("test", [])
    floor = metrics.min_pairs_for_significance(recipe.reward.alpha)
    need = max(recipe.reward.min_heldout_pairs, floor)
    if len(heldout) < need:
        raise UserError(
            f"{', '.join(recipe.data.files)}: only {len(heldout)} held-out pairs (val+test of "
            f"{sum(len(v) for v in prepared.splits.values())} pairs at data.val_fraction={recipe.data.val_fraction}, "
            f"data.test_fraction={recipe.data.test_fraction}); the reward-model gate needs at least {need} "
            f"(reward.min_heldout_pairs={recipe.reward.min_heldout_pairs}; below {floor} even a perfect score cannot "
            f"reach p < {recipe.reward.alpha}). Add pairs or raise data.val_fraction")
    return heldout


def score_pairs(scorer: RewardScorer, pairs: list, batch_size: int) -> tuple[list[float], list[float]]:
    """Scores of every pair's chosen and rejected reply (the final assistant message), in one batched call."""
    prompts = [p.prompt + p.chosen[:-1] for p in pairs] + [p.prompt + p.rejected[:-1] for p in pairs]
    replies = [p.chosen[-1]["content"] for p in pairs] + [p.rejected[-1]["content"] for p in pairs]
    scores = scorer.score(prompts, replies, batch_size=batch_size)
    return scores[:len(pairs)], scores[len(pairs):]


def pair_lengths(pairs: list, tokenizer) -> list[int]:
    """Tokens of each pair's longer side: the Trainer's group_by_length sampler batches similar pairs together."""
    texts = [tokenizer.apply_chat_template(p.prompt + side, tokenize=False) for p in pairs for side in (p.chosen, p.rejected)]
    n = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return [max(n[2 * i], n[2 * i + 1]) for i in range(len(pairs))]


def plot_calibration(stats: dict, path) -> None:
    """Accuracy per |margin| bucket against the Bradley-Terry expectation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = stats["calibration"]
    labels = [f"{b['abs_margin_min']:.2f}–{b['abs_margin_max']:.2f}\n(n={b['n']})" for b in buckets]
    x = range(len(buckets))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([i - 0.2 for i in x], [b["accuracy"] for b in buckets], width=0.4, label="held-out accuracy")
    ax.bar([i + 0.2 for i in x], [b["expected"] for b in buckets], width=0.4, label="expected: mean σ(|margin|)")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("|score(chosen) − score(rejected)| bucket")
    ax.set_title(f"Reward-model calibration: accuracy {stats['accuracy']:.2f} on {stats['n']} held-out pairs")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_data(recipe: RewardRecipe, tokenizer) -> lifecycle.Data:
    """Curated pairs; the val + test pairs are the held-out set (evaluated during training, then gated on)."""
    prepared = load_pairs(recipe.data, tokenizer, overlong=recipe.reward.overlong)
    print(f"data: {prepared.report}")
    heldout = heldout_pairs(prepared, recipe)
    train_ds, eval_ds = to_preference_dataset(prepared.splits["train"]), to_preference_dataset(heldout)
    # the length-grouped sampler serves the held-out evaluation too (the Trainer asks it for both)
    train_ds = train_ds.add_column("length", pair_lengths(prepared.splits["train"], tokenizer))
    eval_ds = eval_ds.add_column("length", pair_lengths(heldout, tokenizer))
    return lifecycle.Data(inputs=prepared.sha256s, train=train_ds, eval=eval_ds, extra={"heldout": heldout},
                      fields={"data": {"sha256": prepared.sha256s, "curation": prepared.report},
                              "init_adapter": recipe.model.adapter})


def build_trainer(ctx: lifecycle.Context):
    """A sequence-classification model (on base + SFT adapter, merged, when model.adapter is set) with a new
    LoRA and score head, under TRL's RewardTrainer."""
    from trl import RewardTrainer

    recipe, tokenizer = ctx.recipe, ctx.tokenizer
    model = models.load_model(recipe.model, sequence_classification=True, num_labels=1)
    if recipe.model.adapter:
        model = merge_into_seq_cls(recipe.model, recipe.model.adapter, model)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head pools the last non-pad token
    # SEQ_CLS makes peft train and save the new `score` head (modules_to_save) next to the LoRA weights.
    try:
        model = models.attach_lora(model, recipe.lora, gradient_checkpointing=ctx.args.activation_checkpointing,
                                   task_type="SEQ_CLS")
    except ValueError as e:  # e.g. layers_to_transform past this model's depth
        raise UserError(f"lora: {str(e).splitlines()[0][:300]}") from None
    return lifecycle.build_trainer(RewardTrainer, model=model, args=ctx.args, train_dataset=ctx.data.train,
                               eval_dataset=ctx.data.eval, processing_class=tokenizer, callbacks=ctx.callbacks,
                               lora=ctx.recipe.lora)


def finish(ctx: lifecycle.Context, trainer, result) -> None:
    """Save the adapter (with the SFT adapter it sits on), check the saved model scores like the trained one,
    then held-out accuracy, margin, calibration and the gate."""
    lifecycle.save_adapter(ctx, trainer.model)  # every rank takes part (FSDP gathers); rank 0 writes
    # the reload check, held-out scoring and the gate need one answer: rank 0, the others wait for its verdict
    distributed.on_main(lambda: _check_and_gate(ctx, trainer, result))


def _check_and_gate(ctx: lifecycle.Context, trainer, result) -> None:
    recipe, tokenizer, run, heldout = ctx.recipe, ctx.tokenizer, ctx.run, ctx.data.extra["heldout"]
    if recipe.model.adapter:  # the reward model sits on base + SFT: keep the SFT adapter with it
        shutil.copytree(recipe.model.adapter, run.adapter_dir / SFT_INIT_DIR)

    # Measure what was saved: reload the adapter (merged) and check it scores like the trained model.
    # Unwrapped without accelerate's autocast wrapper, so both sides score in the weights' own precision.
    trained = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False).eval()
    in_memory = RewardScorer(trained, tokenizer)
    saved = RewardScorer.from_adapter(run.adapter_dir, recipe.model.base)
    probe = heldout[:4]
    before, after = score_pairs(in_memory, probe, 8), score_pairs(saved, probe, 8)
    drift = max(abs(a - b) for a, b in zip(before[0] + before[1], after[0] + after[1]))
    if drift > RELOAD_TOLERANCE:
        raise TrainingFailed(f"the saved reward model scores differently from the trained one (max |Δ| = "
                             f"{drift:.3g}); the score head was not saved with the adapter")
    chosen, rejected = score_pairs(saved, heldout, recipe.reward.score_batch_size)
    stats = metrics.pairwise_stats(chosen, rejected, recipe.reward.calibration_buckets)
    verdict = metrics.gate(stats, recipe.reward.alpha)
    logger = ctx.opened.metrics.logger
    logger.log({f"heldout/{k}": v for k, v in stats.items() if isinstance(v, (int, float))}, step=result.global_step)
    logger.log({"heldout/calibration": stats["calibration"]}, step=result.global_step)
    plot_calibration(stats, run.path / "calibration.png")
    ctx.summary.update(heldout_accuracy=stats["accuracy"], heldout_mean_margin=stats["mean_margin"],
                       heldout_pairs=stats["n"], gate_p_value=verdict["p_value"], reload_max_abs_diff=drift)
    ctx.fields.update(heldout=stats, reward_gate=verdict)
    print(f"reward gate: {verdict['verdict'].upper()}: {verdict['reason']}"
          + ("" if verdict["passed"] else " — RLHF will refuse this reward model"))


STAGE = lifecycle.Stage(name="reward", recipe=RewardRecipe, trl_config="RewardConfig", defaults=REWARD_DEFAULTS,
                    consumes=("pairs",), produces="reward_model", load_data=load_data, build_trainer=build_trainer,
                    finish=finish)


def run(recipe: RewardRecipe) -> Run:
    """Train a LoRA reward model (score head saved with the adapter) and gate it on held-out pairs."""
    return lifecycle.run(STAGE, recipe)
