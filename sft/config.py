"""The SFT recipe: model, lora, data, train (verbatim to TRL's SFTConfig), tracking, output."""

from __future__ import annotations

from dataclasses import dataclass, field

from alignkit.recipe import DataConfig, ModelConfig, OutputConfig, TrackingConfig, lora_keys, trl_keys

# Our defaults under the recipe's `train:`; every key can be overridden there.
SFT_DEFAULTS = {
    # Padding-free batches: no compute spent on pad tokens. On CPU, transformers builds the block-diagonal
    # mask from position_ids, so sequences in one batch never attend to each other.
    "padding_free": True,
    # TRL turns checkpointing on by default; on a 135M model the recompute costs ~30% of step time for
    # activations that fit easily.
    "activation_checkpointing": False,
    "logging_steps": 5,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 2,
    "eval_strategy": "epoch",
    "per_device_eval_batch_size": 16,
    # Padding-free without packing does not truncate: data.max_tokens already dropped over-long records.
    "max_length": None,
    "num_train_epochs": 2,
    "learning_rate": 2.0e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 5,
    # Optimizer batch 8 as 2 accumulated micro-batches of 4: bench/sft_throughput.py measured 130 tokens/s at
    # 4,078 MB peak vs 110 tokens/s at 5,143 MB for 8 in one forward (the activations of one micro-batch are the peak).
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "seed": 42,
    "dataloader_num_workers": 0,
    "disable_tqdm": False,
}


@dataclass(frozen=True)
class SFTRecipe:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Base model and quantization."})
    lora: dict = field(default_factory=dict, metadata={"help": "peft LoraConfig fields (r, alpha, dropout, "
                                                       "target_modules …)", "passthrough": lora_keys})
    data: DataConfig = field(default_factory=lambda: DataConfig(train="recipes/data/sft_demo.jsonl"),
                             metadata={"help": "Training data and curation."})
    train: dict = field(default_factory=dict, metadata={"help": "TRL SFTConfig fields, verbatim.",
                                                        "passthrough": trl_keys("SFTConfig")})
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
