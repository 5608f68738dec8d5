"""DPO (and KTO), top to bottom: pairs → the parent's SFT adapter, trainable, with its frozen copy as the
reference → TRL trainer → step-0 reference check → train → best checkpoint, held-out metrics, adapter.

The lifecycle around it (tokenizer, template lineage, resolved TRL config, run, manifest) is
`alignkit.lifecycle.run`; `DPO` and `KTO` are what it needs to know about these stages.
"""

from __future__ import annotations

import random

from alignkit import distributed, lifecycle, models
from alignkit.errors import UserError
from alignkit.pairs import load_pairs, pairs_to_kto, thumbs_to_kto, to_kto_dataset, to_preference_dataset
from alignkit.runs import Run
from preference.config import DPO_DEFAULTS, KTO_DEFAULTS, DPORecipe, KTORecipe
from preference.reference import check_reference


def policy(recipe, args):
    """The model to train: the parent's adapter continued (trainable), or a new LoRA on the base.

    With an adapter, TRL adds its frozen copy "ref" to the same PeftModel (one copy of the base weights):
    that copy, i.e. base + SFT adapter, is the reference. With a new LoRA (B = 0) the reference is the
    base with adapters disabled, which is then the same thing.
    """
    model = models.load_model(recipe.model)
    if recipe.model.adapter:
        return models.load_adapter(model, recipe.model.adapter, trainable=True)
    return models.attach_lora(model, recipe.lora, gradient_checkpointing=args.activation_checkpointing)


def _pairs(recipe, tokenizer, allow_unpaired: bool):
    prepared = load_pairs(recipe.data, tokenizer, overlong=recipe.pairs.overlong, invalid=recipe.pairs.invalid,
                          allow_unpaired=allow_unpaired, labelled_by=recipe.pairs.labelled_by)
    print(f"data: {prepared.report}")
    return prepared


def _data(prepared, train, val) -> lifecycle.Data:
    # Without held-out pairs there is nothing to evaluate, and no best checkpoint to pick.
    edits = {} if val is not None else {"eval_strategy": "no", "metric_for_best_model": None}
    return lifecycle.Data(inputs=prepared.sha256s, fields={"data": {"sha256": prepared.sha256s, "curation": prepared.report}},
                      train=train, eval=val, trl=edits)


def load_dpo_data(recipe: DPORecipe, tokenizer) -> lifecycle.Data:
    """Curated pairs in TRL's conversational preference format (prompt, chosen, rejected)."""
    prepared = _pairs(recipe, tokenizer, allow_unpaired=False)
    return _data(prepared, *(to_preference_dataset(prepared.splits[s]) for s in ("train", "val")))


def load_kto_data(recipe: KTORecipe, tokenizer) -> lifecycle.Data:
    """Thumbs (unpaired) and pairs split into thumbs, in TRL's unpaired format (prompt, completion, label)."""
    prepared = _pairs(recipe, tokenizer, allow_unpaired=True)
    seed = recipe.train.get("seed", KTO_DEFAULTS["seed"])

    def rows(split: str):
        out = pairs_to_kto(prepared.splits[split]) + thumbs_to_kto(prepared.unpaired[split])
        # KTO's KL term pairs each example with its batch neighbours in a fixed (sequential) order, so the
        # two halves of one pair must not sit side by side: a seeded shuffle.
        random.Random(seed).shuffle(out)
        return to_kto_dataset(out)

    return _data(prepared, rows("train"), rows("val"))


class OpeningCollator:
    """TRL's preference collator on the first `tokens` tokens of each reply (and no end-of-turn after them).

    A round's pair differs where the reply refuses or answers, in its first few tokens; DPO's log-ratio sums
    over all of them, so on 40-token replies the decision is one term in ~40 and the rest is content.
    """

    def __init__(self, collate, tokens: int):
        self.collate, self.tokens = collate, tokens

    def __call__(self, examples: list[dict]) -> dict:
        cut = [{**ex, "chosen_ids": ex["chosen_ids"][:self.tokens], "rejected_ids": ex["rejected_ids"][:self.tokens]}
               for ex in examples]
        return self.collate(cut)


def build_trainer(ctx: lifecycle.Context):
    """The policy under TRL's DPOTrainer or KTOTrainer (by the config class), reference checked at step 0."""
    import trl

    trainer_cls = trl.DPOTrainer if isinstance(ctx.args, trl.DPOConfig) else trl.KTOTrainer
    opening = ctx.recipe.pairs.opening_tokens
    if opening and trainer_cls is not trl.DPOTrainer:
        raise UserError("pairs.opening_tokens: DPO only (KTO scores each reply on its own, with no pair to cut)")
    if opening and ctx.args.precompute_ref_log_probs:
        # TRL scores the reference while the trainer is built, on whole replies, before the cut applies
        raise UserError("pairs.opening_tokens needs train.precompute_ref_log_probs: false (the reference is "
                        "then scored on the same cut replies in each step)")
    trainer = lifecycle.build_trainer(trainer_cls, model=policy(ctx.recipe, ctx.args), args=ctx.args,
                                  train_dataset=ctx.data.train, eval_dataset=ctx.data.eval,
                                  processing_class=ctx.tokenizer, callbacks=ctx.callbacks, lora=ctx.recipe.lora)
    if opening:  # every dataloader, the step-0 check's batch too, is collated from here on
        trainer.data_collator = OpeningCollator(trainer.data_collator, opening)
    # one answer for the run: rank 0 scores the pairs (no collective inside), every rank stops if it fails
    ref_check = distributed.on_main(
        lambda: check_reference(trainer, ctx.recipe.reference.pairs, ctx.recipe.reference.tolerance))
    if distributed.is_main():
        print(f"reference check: passed (max |implicit reward| {ref_check.max_abs_reward:.2e} on "
              f"{ref_check.sequences} sequences)")
    ctx.run.update(reference_check=ref_check.as_dict())
    return trainer


def finish(ctx: lifecycle.Context, trainer, result) -> None:
    """Held-out metrics, the best checkpoint by the stage's metric, the adapter."""
    lifecycle.evaluate(ctx, trainer)
    ctx.fields["best_checkpoint"] = {"checkpoint": trainer.state.best_model_checkpoint,
                                     "metric": trainer.args.metric_for_best_model, "value": trainer.state.best_metric}
    lifecycle.save_adapter(ctx, trainer.model)


DPO = lifecycle.Stage(
    name="dpo", recipe=DPORecipe, trl_config="DPOConfig", defaults=DPO_DEFAULTS,
    consumes=("pairs", "adapter"), produces="adapter", load_data=load_dpo_data, build_trainer=build_trainer,
    finish=finish, eval_keys={"eval_loss": "eval_loss", "eval_preference_accuracy": "eval_rewards/accuracies",
                              "eval_reward_margin": "eval_rewards/margins"})

KTO = lifecycle.Stage(
    name="kto", recipe=KTORecipe, trl_config="KTOConfig", defaults=KTO_DEFAULTS,
    consumes=("pairs", "adapter"), produces="adapter", load_data=load_kto_data, build_trainer=build_trainer,
    finish=finish, eval_keys={"eval_loss": "eval_loss", "eval_reward_margin": "eval_rewards/margins",
                              "eval_kl": "eval_kl"})


def run(recipe: DPORecipe) -> Run:
    """Refine the recipe's adapter with DPO on preference pairs; returns the completed run."""
    return lifecycle.run(DPO, recipe)


def run_kto(recipe: KTORecipe) -> Run:
    """Refine the recipe's adapter with KTO on thumbs (unpaired) and/or pairs split into thumbs."""
    return lifecycle.run(KTO, recipe)
