"""The preference recipes: DPO (train: verbatim to TRL's DPOConfig) and KTO (train: verbatim to KTOConfig)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from alignkit.recipe import DataConfig, ModelConfig, OutputConfig, TrackingConfig, lora_keys, trl_keys

# Our defaults under the recipe's `train:`; every key can be overridden there.
COMMON_DEFAULTS = {
    # The reference (the SFT policy) never changes, so its log-probs are computed once before training
    # instead of one extra forward pass per step: ~25% of a step (forward+backward ≈ 3 forwards, ref = 1).
    "precompute_ref_log_probs": True,
    "precompute_ref_batch_size": 16,
    # DPO pads chosen and rejected to the longest of the batch (TRL's padding-free DPO is disabled): without
    # recompute its peak RSS measured 1.25x the SFT stage's; with it 0.78x, the step still 0.76x plain TRL's.
    "activation_checkpointing": True,
    "logging_steps": 5,
    "eval_strategy": "steps",
    "eval_steps": 10,
    # save_steps == eval_steps, so every checkpoint has its held-out metrics and the best one is known.
    "save_strategy": "steps",
    "save_steps": 10,
    "save_total_limit": 2,
    "per_device_eval_batch_size": 8,
    "num_train_epochs": 1,
    # LoRA moves less per step than full fine-tuning: TRL's 1e-6 default (full-weight DPO) barely moves an adapter.
    "learning_rate": 5.0e-5,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 2,
    "per_device_train_batch_size": 4,  # 4 pairs = 8 sequences per step, as many as the SFT stage's batch
    "max_length": 512,  # the demo pairs' longest prompt+reply is 288 tokens; data.max_tokens drops longer ones
    "seed": 42,
    "dataloader_num_workers": 0,
    "disable_tqdm": False,
}

DPO_DEFAULTS = {
    **COMMON_DEFAULTS,
    "beta": 0.1,
    # Held-out preference accuracy: the share of val pairs whose implicit reward ranks chosen above rejected.
    "metric_for_best_model": "eval_rewards/accuracies",
    "greater_is_better": True,
}

KTO_DEFAULTS = {
    **COMMON_DEFAULTS,
    "beta": 0.1,
    # KTO's per-example rewards have no pair to rank; the held-out margin (desirable − undesirable) stands in.
    "metric_for_best_model": "eval_rewards/margins",
    "greater_is_better": True,
}


@dataclass(frozen=True)
class PairsConfig:
    overlong: Literal["drop", "truncate"] = field(
        default="drop", metadata={"help": "Pairs over data.max_tokens: drop them, or cut the replies to fit "
                                          "(counted in the data report either way)."})
    invalid: Literal["error", "drop"] = field(
        default="error", metadata={"help": "A pair with chosen == rejected, an empty side or an implicit-prompt "
                                           "mismatch: stop with file:line (error), or count and skip it (drop)."})
    opening_tokens: int | None = field(
        default=None, metadata={"help": "DPO: score only the first N tokens of each reply, where it refuses or "
                                        "answers (unset: whole replies). Needs train.precompute_ref_log_probs: "
                                        "false."})
    labelled_by: list[str] | None = field(
        default=None, metadata={"help": "Train only on exported pairs labelled by these: humans, judge, "
                                        "humans+judge (metadata.labelled_by of `collect export`); unset: all "
                                        "pairs. Counts kept and left out go in the data report."})

    def __post_init__(self):
        if self.opening_tokens is not None and self.opening_tokens < 1:
            raise ValueError(f"pairs.opening_tokens must be ≥ 1, got {self.opening_tokens}")
        if self.labelled_by is not None:
            from alignkit.pairs import LABELLERS

            odd = [w for w in self.labelled_by if w not in LABELLERS] if isinstance(self.labelled_by, list) else [0]
            if odd or not self.labelled_by:
                raise ValueError(f"pairs.labelled_by: expected a non-empty list of {', '.join(LABELLERS)}, got "
                                 f"{self.labelled_by!r}")


@dataclass(frozen=True)
class ReferenceConfig:
    tolerance: float = field(
        default=1.0e-4, metadata={"help": "Step-0 check: the largest |implicit reward| β·(log π − log π_ref) "
                                          "allowed before training, when policy and reference must be equal."})
    pairs: int = field(default=8, metadata={"help": "How many training pairs the step-0 check scores when the "
                                                    "reference is live; with precompute_ref_log_probs it scores "
                                                    "TRL's first precompute batch (exact comparison)."})

    def __post_init__(self):
        if self.tolerance <= 0 or self.pairs < 1:
            raise ValueError("reference.tolerance must be > 0 and reference.pairs ≥ 1")


def _lora():
    return field(default_factory=dict, metadata={
        "help": "peft LoraConfig fields for a new adapter when model.adapter is unset (then the reference is the "
                "base model); ignored when continuing an adapter, which keeps its own config.",
        "passthrough": lora_keys})


def _data():
    return field(default_factory=lambda: DataConfig(train="recipes/data/dpo_demo.jsonl", val_fraction=0.15),
                 metadata={"help": "Preference pairs and curation (split by prompt)."})


def _preference_recipe(name: str, trl_config: str, examples: str) -> type:
    """A preference recipe class: the same sections for DPO and KTO, `train:` checked against `trl_config`."""
    cls = dataclasses.make_dataclass(name, [
        ("model", ModelConfig, field(default_factory=ModelConfig,
                                     metadata={"help": "Base model; model.adapter = the SFT adapter to refine."})),
        ("lora", dict, _lora()),
        ("data", DataConfig, _data()),
        ("pairs", PairsConfig, field(default_factory=PairsConfig,
                                     metadata={"help": "Pair validation and length policy."})),
        ("reference", ReferenceConfig, field(default_factory=ReferenceConfig,
                                             metadata={"help": "Step-0 reference check."})),
        ("train", dict, field(default_factory=dict, metadata={
            "help": f"TRL {trl_config} fields, verbatim ({examples}).", "passthrough": trl_keys(trl_config)})),
        ("tracking", TrackingConfig, field(default_factory=TrackingConfig)),
        ("output", OutputConfig, field(default_factory=OutputConfig)),
    ], frozen=True)
    cls.__module__ = __name__
    return cls


DPORecipe = _preference_recipe("DPORecipe", "DPOConfig", "beta, loss_type, label_smoothing …")
KTORecipe = _preference_recipe("KTORecipe", "KTOConfig", "beta, desirable_weight …")
