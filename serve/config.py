"""The serve recipe: which runs to serve, how the engine batches, the server's limits, A/B, feedback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from alignkit.recipe import ModelConfig


@dataclass(frozen=True)
class EngineConfig:
    kind: Literal["transformers", "vllm"] = field(
        default="transformers", metadata={"help": "transformers + peft in this process (CPU or one GPU), or vllm: "
                                                  "start/attach to `vllm serve --enable-lora` and load adapters "
                                                  "through its runtime LoRA endpoints."})
    max_batch: int = field(default=16, metadata={"help": "Requests generated together in one batch at most."})
    max_wait_ms: float = field(
        default=100.0, metadata={"help": "How long the first request of a batch waits for others to join it."})
    threads: int | None = field(default=None, metadata={"help": "torch threads (None: torch's default)."})
    pack_weights: bool = field(
        default=True, metadata={"help": "CPU: a oneDNN-packed copy of each linear weight for batched steps "
                                        "(≈ 1.5x faster 8-row steps on SmolLM2-135M; one more copy of the weights)."})
    vllm_url: str | None = field(
        default=None, metadata={"help": "vllm: an already running `vllm serve --enable-lora` (http://127.0.0.1:8001); "
                                        "None starts one with the base model."})
    vllm_args: list[str] = field(default_factory=list, metadata={"help": "vllm: extra `vllm serve` arguments."})

    def __post_init__(self):
        if self.max_batch < 1 or self.max_wait_ms < 0:
            raise ValueError("engine.max_batch must be ≥ 1 and engine.max_wait_ms ≥ 0")


@dataclass(frozen=True)
class ServerConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "Bind address; anything but loopback is an opt-in."})
    port: int = field(default=8000, metadata={"help": "TCP port."})
    max_body_bytes: int = field(default=262144, metadata={"help": "Largest request body (bytes); larger is 413."})
    max_tokens: int = field(default=512, metadata={"help": "Largest max_tokens a request may ask for (400 above)."})
    default_max_tokens: int = field(default=128, metadata={"help": "max_tokens when a request gives none."})
    context_length: int | None = field(
        default=None, metadata={"help": "Prompt + max_tokens limit in tokens (None: the model's own)."})
    rate_limit_per_minute: int = field(default=600, metadata={"help": "Requests per API key per minute (429 above)."})
    watch_interval_s: float = field(default=0.5, metadata={"help": "How often the registry is checked for a swap."})

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise ValueError("server.port must be in 1..65535")
        if self.max_tokens < 1 or self.default_max_tokens < 1 or self.rate_limit_per_minute < 1:
            raise ValueError("server.max_tokens, default_max_tokens and rate_limit_per_minute must be ≥ 1")


@dataclass(frozen=True)
class ABConfig:
    runs: list[str] = field(default_factory=list, metadata={
        "help": "Two run ids [A, B]: requests for the pipeline's name go to one of them, sticky per user "
                "(the `user` field, else the API key). Empty: the promoted run answers."})
    split: float = field(default=0.5, metadata={"help": "Share of users sent to A (the first run)."})

    def __post_init__(self):
        if self.runs and len(self.runs) != 2:
            raise ValueError("ab.runs must name exactly two runs [A, B], or be empty")
        if not 0 <= self.split <= 1:
            raise ValueError("ab.split must be in [0, 1]")


@dataclass(frozen=True)
class FeedbackConfig:
    store: str | None = field(default="sqlite:///runs/demo/collect.db", metadata={
        "help": "The collect store that keeps every answer and its feedback (null: none; /v1/feedback is 404)."})
    refusal_sample_every: int = field(
        default=1, metadata={"help": "Label every k-th answer with the refusal detector (for A/B refusal rates)."})


@dataclass(frozen=True)
class ServeRecipe:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "The base model every adapter is on."})
    runs: str = field(default="runs/demo", metadata={"help": "The pipeline's run folder (its registry); --runs wins."})
    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    ab: ABConfig = field(default_factory=ABConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
