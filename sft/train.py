"""SFT, top to bottom: tokenizer → data → run → model + LoRA → TRL SFTTrainer → adapter → manifest."""

from __future__ import annotations

from alignkit import models, stage
from alignkit.data import to_prompt_completion
from alignkit.prepare import prepare_conversations
from alignkit.runs import Run
from sft.config import SFT_DEFAULTS, SFTRecipe


def to_dataset(conversations):
    """Conversations → a TRL prompt/completion dataset (loss on assistant tokens only)."""
    from datasets import Dataset

    rows = [row for c in conversations for row in to_prompt_completion(c)]
    return Dataset.from_list(rows) if rows else None


def run(recipe: SFTRecipe) -> Run:
    """Train a LoRA (or QLoRA) adapter on the recipe's data; returns the completed run."""
    from trl import SFTConfig, SFTTrainer

    tokenizer, template_sha, parent = stage.start(recipe.model)
    prepared = prepare_conversations(recipe.data, tokenizer)
    print(f"data: {prepared.report}")

    opened = stage.open_run(recipe, "sft", inputs=prepared.sha256s, parent=parent, extra={
        **stage.model_manifest(recipe.model, template_sha),
        "data": {"sha256": prepared.sha256s, "curation": prepared.report},
    })
    with stage.guard(opened):
        model = models.load_model(recipe.model)
        args = stage.trl_args(SFTConfig, recipe.train, opened, recipe.tracking, SFT_DEFAULTS)
        if recipe.model.adapter:
            model = models.load_adapter(model, recipe.model.adapter, trainable=True)
        else:
            model = models.attach_lora(model, recipe.lora, gradient_checkpointing=args.activation_checkpointing)
        train_ds, val_ds = to_dataset(prepared.splits["train"]), to_dataset(prepared.splits["val"])
        if val_ds is None:
            args.eval_strategy = "no"
        trainer = stage.build_trainer(SFTTrainer, model=model, args=args, train_dataset=train_ds,
                                      eval_dataset=val_ds, processing_class=tokenizer, callbacks=[opened.metrics])
        result = trainer.train(resume_from_checkpoint=opened.resume_from)
        stage.check_finite(opened)
        summary = {"train_loss": result.training_loss, "train_steps": result.global_step,
                   "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 1)}
        if val_ds is not None:
            val = trainer.evaluate()
            summary["val_loss"] = val["eval_loss"]
            stage.check_finite(opened)
        models.save_adapter(trainer.model, tokenizer, opened.run.adapter_dir)
        return stage.close_run(opened, summary)
