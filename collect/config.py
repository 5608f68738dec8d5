"""The collect recipe: which policy writes the candidates, how the queue hands them out, what annotators read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from alignkit.recipe import ModelConfig, at_least, require


@dataclass(frozen=True)
class GenerationConfig:
    rival: str | None = field(
        default=None,
        metadata={"help": "Second answer's generator: null = a second sample of the policy under review; "
                          "'base' = the base model without adapter; a path = another adapter (e.g. v1)."})
    contrast: str | None = field(
        default=None,
        metadata={"help": "An opener such as \"I can't help with that.\": each item then pairs the policy's answer "
                          "(the opener's first token banned as its first token) with the policy's own continuation "
                          "of the opener, so the two differ in the decision to refuse. null = two free samples."})
    contrast_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Longest continuation of the contrast opener, in tokens (null: max_new_tokens)."})
    max_new_tokens: int = field(default=192, metadata={"help": "Longest candidate answer, in tokens."})
    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature of every candidate."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass of every candidate."})
    seed: int = field(default=1234, metadata={"help": "Base seed; each batch gets seed + batch number."})
    pairs_per_prompt: int = field(default=1, metadata={"help": "Candidate pairs (items) generated per prompt."})
    batch_size: int = field(default=8, metadata={"help": "Prompts generated per batch."})
    ahead: int = field(default=16, metadata={"help": "Keep at least this many open items ready before annotators."})
    near_duplicate: float = field(
        default=0.9, metadata={"help": "Pairs at least this similar (difflib ratio, 0–1) are flagged and regenerated."})
    max_attempts: int = field(default=3, metadata={"help": "Regenerations of a near-identical pair before giving up."})
    threads: int = field(default=1, metadata={"help": "torch threads for the worker (leave cores to the server)."})
    prerank: str | None = field(
        default=None, metadata={"help": "A reward run (that passed its gate) scoring both answers of every new "
                                        "pair: stored with each candidate, exported with the pair, and `collect "
                                        "stats` shows how often the annotators' majority agrees with it."})

    def __post_init__(self):
        require(0 < self.near_duplicate <= 1, "generation.near_duplicate must be in (0, 1]")
        require(not (self.contrast and self.rival), "generation.contrast and generation.rival: set one of them "
                "(contrast pairs two answers of the policy under review)")
        require(self.contrast is None or bool(self.contrast.strip()), "generation.contrast must be an opener text or null")
        at_least("generation", pairs_per_prompt=(self.pairs_per_prompt, 1), batch_size=(self.batch_size, 1),
                 max_attempts=(self.max_attempts, 1))


@dataclass(frozen=True)
class QueueConfig:
    overlap: int = field(default=3, metadata={"help": "Independent votes (N) each item needs."})
    reservation_minutes: float = field(
        default=15.0, metadata={"help": "How long an item stays reserved for one annotator before it returns."})
    repeat_every: int = field(
        default=10, metadata={"help": "Every k-th generated item also gets a blind repeat (0 = none)."})
    repeat_gap: int = field(
        default=5, metadata={"help": "An annotator sees a repeat only after this many own votes since the original."})
    show_judge: bool = field(
        default=False, metadata={"help": "Show a judge's (collect judge) choice on an item to people as a text "
                                          "suggestion (never a preselected answer); each vote records whether one "
                                          "was visible. Off by default: a suggestion can anchor annotators."})

    def __post_init__(self):
        at_least("queue", overlap=(self.overlap, 1))
        require(self.reservation_minutes > 0, "queue.reservation_minutes must be positive")


@dataclass(frozen=True)
class ExportConfig:
    min_votes: int = field(default=1, metadata={"help": "Items with fewer counted votes are not exported."})
    min_agreement: float = field(
        default=0.0, metadata={"help": "Share of votes that must agree with the majority (0–1)."})
    judges: Literal["include", "exclude", "only"] = field(
        default="include", metadata={"help": "Votes of `collect judge`: counted like people's, left out, or the only "
                                             "ones (--judges overrides)."})
    edited_as_chosen: bool = field(
        default=False, metadata={"help": "Use an annotator's edited ideal answer as the chosen side."})
    judge_weight: float = field(
        default=1.0, metadata={"help": "What one judge vote counts for in an item's majority and agreement share, "
                                       "a person's vote counting 1 (0.5: people outvote the judge when they split)."})

    def __post_init__(self):
        require(self.judge_weight > 0,
                "export.judge_weight must be positive (to leave judge votes out: export.judges: exclude)")


@dataclass(frozen=True)
class CollectRecipe:
    model: ModelConfig = field(default_factory=ModelConfig,
                               metadata={"help": "Policy under review; model.adapter or --adapter picks the adapter."})
    store: str = field(default="sqlite:///runs/demo/collect.db",
                       metadata={"help": "Store URL: sqlite:///path (default) or postgresql://user@host/db."})
    prompts: str = field(default="recipes/data/prompts.jsonl", metadata={"help": "Prompts loaded by `collect init`."})
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    guidelines: str = field(default="Pick the answer that is more helpful, honest and harmless.",
                            metadata={"help": "Markdown shown to annotators next to every item."})
