"""SFT, top to bottom: curated conversations → model + LoRA (or the parent's adapter) → TRL SFTTrainer.

The lifecycle around it (tokenizer, lineage, resolved TRL config, run, train, save, manifest) is
`alignkit.lifecycle.run`; `STAGE` is what it needs to know about SFT.
"""

from __future__ import annotations

from alignkit import lifecycle, models
from alignkit.data import prepare_conversations, to_prompt_completion
from alignkit.runs import Run
from sft.config import SFT_DEFAULTS, SFTRecipe


def to_dataset(conversations):
    """Conversations → a TRL prompt/completion dataset (loss on assistant tokens only)."""
    from datasets import Dataset

    rows = [row for c in conversations for row in to_prompt_completion(c)]
    return Dataset.from_list(rows) if rows else None


def load_data(recipe: SFTRecipe, tokenizer) -> lifecycle.Data:
    """Curated train/val conversations as TRL datasets; without a val split there is nothing to evaluate."""
    prepared = prepare_conversations(recipe.data, tokenizer)
    print(f"data: {prepared.report}")
    train, val = to_dataset(prepared.splits["train"]), to_dataset(prepared.splits["val"])
    return lifecycle.Data(inputs=prepared.sha256s, fields={"data": {"sha256": prepared.sha256s, "curation": prepared.report}},
                      train=train, eval=val, trl={} if val is not None else {"eval_strategy": "no"})


def build_trainer(ctx: lifecycle.Context):
    """A new LoRA on the base (or the parent's adapter, trainable) under TRL's SFTTrainer."""
    from trl import SFTTrainer

    model = models.load_model(ctx.recipe.model)
    if ctx.recipe.model.adapter:
        model = models.load_adapter(model, ctx.recipe.model.adapter, trainable=True)
    else:
        model = models.attach_lora(model, ctx.recipe.lora, gradient_checkpointing=ctx.args.activation_checkpointing)
    return lifecycle.build_trainer(SFTTrainer, model=model, args=ctx.args, train_dataset=ctx.data.train,
                               eval_dataset=ctx.data.eval, processing_class=ctx.tokenizer, callbacks=ctx.callbacks,
                               lora=ctx.recipe.lora)


STAGE = lifecycle.Stage(
    name="sft", recipe=SFTRecipe, trl_config="SFTConfig", defaults=SFT_DEFAULTS,
    consumes=("conversations", "adapter"), produces="adapter",
    load_data=load_data, build_trainer=build_trainer, eval_keys={"val_loss": "eval_loss"})


def run(recipe: SFTRecipe) -> Run:
    """Train a LoRA (or QLoRA) adapter on the recipe's data; returns the completed run."""
    return lifecycle.run(STAGE, recipe)
