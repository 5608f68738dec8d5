"""Recipes of the reward stage: RewardRecipe (reward model from pairs) and RLHFRecipe (RLOO/GRPO against it).

`train:` goes verbatim to TRL's RewardConfig, or RLOOConfig/GRPOConfig for RLHF; `lora:` to peft's LoraConfig.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from alignkit.recipe import DataConfig, ModelConfig, OutputConfig, TrackingConfig, at_least, lora_keys, require, trl_keys

# Our defaults under the reward recipe's `train:`; every key can be overridden there.
REWARD_DEFAULTS = {
    # TRL turns checkpointing on by default; a 135M model's activations fit easily and the recompute costs ~30%.
    "activation_checkpointing": False,
    "num_train_epochs": 2,
    # A fresh score head and LoRA on top of a chat model: 1e-4 (TRL's default) moves the head too slowly on
    # a few hundred pairs; 5e-4 reached above-chance held-out accuracy within one epoch on the demo pairs.
    "learning_rate": 5.0e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 5,
    "per_device_train_batch_size": 8,   # 8 pairs = 16 sequences per step
    # Batches of similar length: the demo pairs run 85-288 tokens, and random batches were 57% padding.
    # Needs the `length` column train.py adds, which the Trainer would drop with remove_unused_columns.
    "train_sampling_strategy": "group_by_length",
    "remove_unused_columns": False,
    "per_device_eval_batch_size": 16,
    "max_length": 1024,
    "logging_steps": 5,
    "eval_strategy": "epoch",
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 2,
    "seed": 42,
    "dataloader_num_workers": 0,
    "disable_tqdm": False,
}

# Our defaults under the RLHF recipe's `train:` (RLOOConfig or GRPOConfig fields).
RLHF_DEFAULTS = {
    "activation_checkpointing": False,
    # LoRA learns at ~100x a full fine-tune's rate; TRL's 1e-6 default is for full weights.
    "learning_rate": 1.0e-5,
    "beta": 0.05,                         # KL coefficient to the starting (SFT) policy
    "num_generations": 4,                 # group size: the leave-one-out baseline averages the other 3
    "per_device_train_batch_size": 8,     # 8 completions = 2 prompts x 4 generations per step
    "max_completion_length": 128,
    "temperature": 1.0,
    "top_p": 1.0,
    # With a reference adapter, dropout would make the policy's and the reference's log-probs differ at step 0.
    "disable_dropout": True,
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 2,
    "max_steps": 50,
    "seed": 42,
    "dataloader_num_workers": 0,
    "disable_tqdm": False,
}


def _section(factory, help_: str):
    """A recipe section (a dataclass, or a factory of one) with its help text."""
    return field(default_factory=factory, metadata={"help": help_})


def _passthrough(help_: str, keys):
    """A section handed verbatim to a library's config (peft, TRL); `keys` names what it accepts."""
    return field(default_factory=dict, metadata={"help": help_, "passthrough": keys})


def _pairs_data(help_: str):
    """The same pairs and split for both recipes: the prompts the reward model was gated on (val/test) never
    become RLHF training prompts."""
    return field(default_factory=lambda: DataConfig(train="recipes/data/dpo_demo.jsonl", val_fraction=0.2),
                 metadata={"help": help_})


def rlhf_train_keys() -> list[str]:
    """`train:` of an RLHF recipe accepts RLOOConfig and GRPOConfig names; the chosen algorithm's class checks again."""
    return sorted(set(trl_keys("RLOOConfig")()) | set(trl_keys("GRPOConfig")()))


@dataclass(frozen=True)
class RewardModelConfig:
    alpha: float = field(default=0.05, metadata={"help": "Gate: held-out accuracy must beat 0.5 with a one-sided "
                                                          "binomial p-value below this."})
    min_heldout_pairs: int = field(default=20, metadata={"help": "Refuse to train with fewer held-out (val+test) "
                                                                 "pairs than this; the gate needs them."})
    calibration_buckets: int = field(default=4, metadata={"help": "Equal-count |margin| buckets for calibration."})
    score_batch_size: int = field(default=16, metadata={"help": "Batch size when scoring held-out pairs."})
    overlong: Literal["drop", "truncate"] = field(default="drop", metadata={
        "help": "Pairs longer than data.max_tokens: drop them, or cut both replies to fit."})

    def __post_init__(self):
        require(0 < self.alpha < 1, "reward.alpha must be in (0, 1)")
        at_least("reward", min_heldout_pairs=(self.min_heldout_pairs, 1))


@dataclass(frozen=True)
class RewardRecipe:
    model: ModelConfig = _section(ModelConfig, "Base model; model.adapter (optional) is an SFT adapter merged in "
                                               "before the reward head is trained.")
    lora: dict = _passthrough("peft LoraConfig fields (r, alpha, dropout, target_modules …)", lora_keys)
    data: DataConfig = _pairs_data("Preference pairs and curation; val+test pairs are the held-out set.")
    reward: RewardModelConfig = _section(RewardModelConfig, "Gate and held-out metrics.")
    train: dict = _passthrough("TRL RewardConfig fields, verbatim.", trl_keys("RewardConfig"))
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


@dataclass(frozen=True)
class RewardSource:
    model: str | None = field(default=None, metadata={
        "help": "A reward run directory (or its adapter/) from `alignkit reward`; it must have passed its gate."})
    function: str | None = field(default=None, metadata={
        "help": "Instead of a model: 'module:function' with TRL's reward signature (prompts, completions, **kw) "
                "-> list[float], e.g. a rule-based reward."})
    batch_size: int = field(default=16, metadata={"help": "Reward-model scoring batch size."})
    allow_failed_gate: bool = field(default=False, metadata={
        "help": "Use a reward model that failed its gate anyway (recorded in the manifest)."})

    def __post_init__(self):
        if bool(self.model) == bool(self.function):
            raise ValueError("reward: set exactly one of reward.model (a reward run) or reward.function "
                             "('module:function')")


@dataclass(frozen=True)
class RLHFConfig:
    algorithm: Literal["rloo", "grpo"] = field(default="rloo", metadata={
        "help": "rloo (TRL RLOOTrainer: leave-one-out baseline, KL in the reward) or grpo (GRPOTrainer)."})
    kl_ceiling: float | None = field(default=0.5, metadata={
        "help": "Fail the run when the logged mean per-token KL to the starting policy exceeds this (null: off)."})
    min_mean_length: float | None = field(default=1.0, metadata={
        "help": "Fail the run when the mean completion length (tokens) falls below this (null: off)."})
    max_clipped_ratio: float | None = field(default=1.0, metadata={
        "help": "Fail the run when this share of completions hits max_completion_length (1.0: every sample), "
                "unless it already did at the first step (then the limit is too short, not hacked; null: off)."})
    patience: int = field(default=1, metadata={"help": "Consecutive logged steps a symptom must persist to fail."})
    eval_prompts: int = field(default=16, metadata={
        "help": "Score greedy replies to this many training prompts before and after training (0: skip)."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use at most this many training prompts."})

    def __post_init__(self):
        at_least("rlhf", patience=(self.patience, 1), eval_prompts=(self.eval_prompts, 0))


@dataclass(frozen=True)
class RLHFRecipe:
    model: ModelConfig = _section(ModelConfig, "Base model; model.adapter is the SFT adapter the policy starts from "
                                               "(and the KL reference).")
    lora: dict = _passthrough("peft LoraConfig fields, used only without model.adapter", lora_keys)
    data: DataConfig = _pairs_data("Prompts: a pairs file (its train-split prompts) or a prompts file "
                                   "({\"prompt\": …} per line).")
    reward: RewardSource = _section(lambda: RewardSource(model="runs/demo/reward"),
                                    "The reward: a gated reward model, or a function.")
    rlhf: RLHFConfig = _section(RLHFConfig, "Algorithm and reward-hacking bounds.")
    train: dict = _passthrough("TRL RLOOConfig (or GRPOConfig) fields, verbatim.", rlhf_train_keys)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
