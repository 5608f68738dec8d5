"""Recipe sections every stage shares: model, lora, data, tracking, output."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

# `lora:` keys are peft's LoraConfig names, plus the short aliases used in our recipes.
LORA_ALIASES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
LORA_DEFAULTS = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}


def lora_keys() -> list[str]:
    """Names `lora:` accepts: every peft LoraConfig field and our aliases."""
    from peft import LoraConfig

    return [f.name for f in dataclasses.fields(LoraConfig)] + list(LORA_ALIASES)


def trl_keys(config_cls_name: str):
    """A passthrough validator: the field names of a TRL config class (SFTConfig, DPOConfig …)."""

    def names() -> list[str]:
        import trl

        return [f.name for f in dataclasses.fields(getattr(trl, config_cls_name))]

    return names


@dataclass(frozen=True)
class ModelConfig:
    base: str = field(
        default="smollm2-135m-instruct",
        metadata={"help": "Embedded alias, local directory, or Hugging Face Hub id of the base model."},
    )
    quantization: Literal["none", "nf4", "int8"] = field(
        default="none", metadata={"help": "nf4 (+ double quant, bf16 compute) is QLoRA; int8; or none."}
    )
    adapter: str | None = field(
        default=None, metadata={"help": "An existing PEFT adapter directory to continue (later stages)."}
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "Weights dtype; auto = float32 on CPU, bfloat16 on CUDA."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "sdpa, eager, flash_attention_2 …; None lets transformers choose."}
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code from the Hub."})


@dataclass(frozen=True)
class DataConfig:
    train: str | list[str] = field(
        default="", metadata={"help": "File(s) (.jsonl .json .csv .parquet) or a Hub dataset id[:split]."}
    )
    val_fraction: float = field(default=0.1, metadata={"help": "Share of records hashed into the val split."})
    test_fraction: float = field(default=0.0, metadata={"help": "Share of records hashed into the test split."})
    split_salt: str = field(
        default="alignkit", metadata={"help": "Salt of the hash split; change it to draw a different split."}
    )
    dedup: bool = field(default=True, metadata={"help": "Drop exact duplicates (normalized text)."})
    near_dedup: bool = field(default=True, metadata={"help": "Drop near-duplicates (MinHash LSH)."})
    near_dedup_threshold: float = field(default=0.85, metadata={"help": "Jaccard similarity counted as near-dup."})
    min_tokens: int = field(default=4, metadata={"help": "Drop records shorter than this (tokens)."})
    max_tokens: int = field(default=1024, metadata={"help": "Drop records longer than this (tokens)."})
    decontaminate: bool = field(
        default=False, metadata={"help": "Drop training records sharing a 13-gram with a bundled eval suite."}
    )

    def __post_init__(self):
        if not self.train:
            raise ValueError("data.train is required: a file path or a Hub dataset id")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise ValueError("data.val_fraction and data.test_fraction must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must be below 1")

    @property
    def files(self) -> list[str]:
        return [self.train] if isinstance(self.train, str) else list(self.train)


@dataclass(frozen=True)
class TrackingConfig:
    backend: Literal["wandb", "none"] = field(
        default="wandb", metadata={"help": "wandb (offline without an API key) or none; metrics.jsonl is always kept."}
    )
    project: str = field(default="alignkit", metadata={"help": "W&B project."})
    group: str | None = field(default=None, metadata={"help": "W&B group (the pipeline sets one per pipeline)."})
    mode: Literal["auto", "online", "offline"] = field(
        default="auto", metadata={"help": "auto = online with WANDB_API_KEY set, else offline."}
    )


@dataclass(frozen=True)
class OutputConfig:
    dir: str = field(default="runs/demo", metadata={"help": "Run folder: stage runs and registry.json go here."})
    resume: Literal["auto", "never"] = field(
        default="auto", metadata={"help": "auto: continue an interrupted run of the same recipe from its checkpoint."}
    )
