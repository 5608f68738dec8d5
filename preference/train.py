"""DPO (and KTO), top to bottom: tokenizer → contracts with the parent → pairs → run → SFT adapter, trainable,
with its frozen copy as the reference → TRL trainer → step-0 reference check → train → adapter → manifest."""

from __future__ import annotations

import random

from alignkit import models, stage
from alignkit.errors import UserError
from alignkit.pairs import load_pairs, pairs_to_kto, thumbs_to_kto, to_kto_dataset, to_preference_dataset
from alignkit.runs import Run
from preference.config import DPO_DEFAULTS, KTO_DEFAULTS, DPORecipe, KTORecipe
from preference.reference import check_reference


def check_template(parent: Run | None, template_sha: str, stage_name: str) -> None:
    """The chat template must be the one the parent run trained with, else the adapter learned other tokens."""
    if parent is None:
        return
    theirs = parent.manifest.get("chat_template_sha256")
    if theirs and theirs != template_sha:
        raise UserError(
            f"chat template mismatch: the parent {parent.manifest.get('stage', 'run')} run {parent.id} trained with "
            f"template sha256 {theirs[:16]}…, this {stage_name} run's tokenizer has {template_sha[:16]}…; "
            "use the parent's base model/tokenizer (the adapter learned its template's tokens)")


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


def _start(recipe, stage_name: str, allow_unpaired: bool):
    tokenizer, template_sha, parent = stage.start(recipe.model)
    check_template(parent, template_sha, stage_name)
    prepared = load_pairs(recipe.data, tokenizer, overlong=recipe.pairs.overlong, invalid=recipe.pairs.invalid,
                          allow_unpaired=allow_unpaired)
    print(f"data: {prepared.report}")
    opened = stage.open_run(recipe, stage_name, inputs=prepared.sha256s, parent=parent, extra={
        **stage.model_manifest(recipe.model, template_sha),
        "data": {"sha256": prepared.sha256s, "curation": prepared.report},
    })
    return tokenizer, prepared, opened


def _train(trainer, opened, recipe, eval_keys: dict[str, str]) -> Run:
    """Step-0 check, train, evaluate, save; shared by DPO and KTO."""
    ref_check = check_reference(trainer, recipe.reference.pairs, recipe.reference.tolerance)
    print(f"reference check: passed (max |implicit reward| {ref_check.max_abs_reward:.2e} on "
          f"{ref_check.sequences} sequences)")
    opened.run.update(reference_check=ref_check.as_dict())
    result = trainer.train(resume_from_checkpoint=opened.resume_from)
    stage.check_finite(opened)
    summary = {"train_loss": result.training_loss, "train_steps": result.global_step,
               "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 1)}
    if trainer.eval_dataset is not None:
        evals = [h for h in trainer.state.log_history if "eval_loss" in h]
        if evals and evals[-1].get("step") == trainer.state.global_step:
            final = evals[-1]  # the last step was just evaluated; a second pass would give the same numbers
        else:
            final = trainer.evaluate()
            stage.check_finite(opened)
        summary.update({name: final[key] for name, key in eval_keys.items() if key in final})
    best = {"checkpoint": trainer.state.best_model_checkpoint, "metric": trainer.args.metric_for_best_model,
            "value": trainer.state.best_metric}
    models.save_adapter(trainer.model, trainer.processing_class, opened.run.adapter_dir)
    return stage.close_run(opened, summary, best_checkpoint=best)


def run(recipe: DPORecipe) -> Run:
    """Refine the recipe's adapter with DPO on preference pairs; returns the completed run."""
    from trl import DPOConfig, DPOTrainer

    tokenizer, prepared, opened = _start(recipe, "dpo", allow_unpaired=False)
    with stage.guard(opened):
        args = stage.trl_args(DPOConfig, recipe.train, opened, recipe.tracking, DPO_DEFAULTS)
        train_ds, val_ds = (to_preference_dataset(prepared.splits[s]) for s in ("train", "val"))
        if val_ds is None:
            args.eval_strategy, args.metric_for_best_model = "no", None
        trainer = stage.build_trainer(DPOTrainer, model=policy(recipe, args), args=args, train_dataset=train_ds,
                                      eval_dataset=val_ds, processing_class=tokenizer, callbacks=[opened.metrics])
        return _train(trainer, opened, recipe, {"eval_loss": "eval_loss",
                                                "eval_preference_accuracy": "eval_rewards/accuracies",
                                                "eval_reward_margin": "eval_rewards/margins"})


def run_kto(recipe: KTORecipe) -> Run:
    """Refine the recipe's adapter with KTO on thumbs (unpaired) and/or pairs split into thumbs."""
    from trl import KTOConfig, KTOTrainer

    tokenizer, prepared, opened = _start(recipe, "kto", allow_unpaired=True)
    with stage.guard(opened):
        args = stage.trl_args(KTOConfig, recipe.train, opened, recipe.tracking, KTO_DEFAULTS)

        def rows(split: str):
            out = pairs_to_kto(prepared.splits[split]) + thumbs_to_kto(prepared.unpaired[split])
            # KTO's KL term pairs each example with its batch neighbours in a fixed (sequential) order, so the
            # two halves of one pair must not sit side by side: a seeded shuffle.
            random.Random(args.seed).shuffle(out)
            return to_kto_dataset(out)

        train_ds, val_ds = rows("train"), rows("val")
        if val_ds is None:
            args.eval_strategy, args.metric_for_best_model = "no", None
        trainer = stage.build_trainer(KTOTrainer, model=policy(recipe, args), args=args, train_dataset=train_ds,
                                      eval_dataset=val_ds, processing_class=tokenizer, callbacks=[opened.metrics])
        return _train(trainer, opened, recipe, {"eval_loss": "eval_loss", "eval_reward_margin": "eval_rewards/margins",
                                                "eval_kl": "eval_kl"})
