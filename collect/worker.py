"""Background generation of candidate pairs, running ahead of the annotators.

Each item pairs two answers to one prompt: two samples of the policy under review, one answer from it and
one from a rival (the base model, or another adapter), or a contrast: the policy's answer against its own
continuation of a refusal opener (`generation.contrast`), so the two always differ in the decision to refuse.
Pairs whose answers are (near-)identical teach nothing: they are stored as `flagged` (never shown, counted
in stats) and the prompt is sampled again with a new seed.
"""

from __future__ import annotations

import difflib
import re
import threading
from dataclasses import dataclass, replace
from typing import Callable, Protocol, Sequence

from alignkit.generate import Sampling
from collect.config import GenerationConfig


class Generator(Protocol):
    name: str
    sampling: Sampling

    def __call__(self, conversations: Sequence[list[dict]], seed: int) -> list[str]: ...


@dataclass
class PolicyGenerator:
    """One loaded policy (base + optional adapter) that samples replies with alignkit.generate.chat."""

    name: str
    model: object
    tokenizer: object
    sampling: Sampling
    batch_size: int = 8

    def __call__(self, conversations, seed):
        from alignkit.generate import chat

        return chat(self.model, self.tokenizer, conversations, replace(self.sampling, seed=seed), self.batch_size)


def load_generators(model_cfg, adapter: str | None, cfg: GenerationConfig) -> tuple[Generator, Generator]:
    """(first, second) generators: the policy twice, or the policy and its rival (`base` or an adapter path)."""
    from alignkit.generate import load_policy

    sampling = Sampling(max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
                        top_p=cfg.top_p)
    adapter = adapter or model_cfg.adapter
    model, tok = load_policy(model_cfg, adapter, merge=True)  # generation only: merged is ~1.8x faster
    name = f"{model_cfg.base}+{adapter}" if adapter else model_cfg.base
    policy = PolicyGenerator(name, model, tok, sampling, cfg.batch_size)
    if cfg.contrast:  # (an answer that may not open like the refusal, the policy's continuation of the refusal)
        answer = replace(policy, sampling=replace(sampling, avoid_opening=cfg.contrast))
        refusal = replace(policy, sampling=replace(sampling, prefix=cfg.contrast,
                                                   max_new_tokens=cfg.contrast_max_new_tokens or cfg.max_new_tokens))
        return answer, refusal
    if cfg.rival is None:
        return policy, policy
    rival_adapter = None if cfg.rival == "base" else cfg.rival
    if rival_adapter is None and not adapter:
        return policy, policy  # the policy is the base model already
    rmodel, rtok = load_policy(model_cfg, rival_adapter, merge=True)
    name = f"{model_cfg.base}+{rival_adapter}" if rival_adapter else model_cfg.base
    return policy, PolicyGenerator(name, rmodel, rtok, sampling, cfg.batch_size)


def similarity(a: str, b: str) -> float:
    """difflib ratio of whitespace- and case-normalized texts: 1.0 identical, ~0 unrelated."""
    na, nb = (re.sub(r"\s+", " ", t).strip().lower() for t in (a, b))
    if na == nb:
        return 1.0
    return difflib.SequenceMatcher(None, na, nb, autojunk=False).ratio()


class Worker:
    """Fills the store with items until every prompt has `pairs_per_prompt` of them, `ahead` at a time."""

    def __init__(self, store, cfg: GenerationConfig, load: Callable[[], tuple[Generator, Generator]]):
        self.store, self.cfg, self._load = store, cfg, load
        self._gens: tuple[Generator, Generator] | None = None
        self._scorer = None  # the pre-ranking reward model (generation.prerank), loaded with the generators
        self.flagged: dict[int, int] = {}  # prompt id → flagged attempts in this run
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def todo(self) -> list[tuple[int, list]]:
        """Prompts still short of items and not given up on, in prompt order."""
        have = self.store.ready_counts()
        limit = self.cfg.max_attempts * self.cfg.pairs_per_prompt
        return [(pid, msgs) for pid, msgs in self.store.prompts()
                if have.get(pid, 0) < self.cfg.pairs_per_prompt and self.flagged.get(pid, 0) < limit]

    def step(self, force: bool = False) -> int:
        """Generate one batch when fewer than `ahead` items are open (or `force`); returns items made ready."""
        if not force and self.store.open_items() >= self.cfg.ahead:
            return 0
        batch = self.todo()[: self.cfg.batch_size]
        if not batch:
            return 0
        if self._gens is None:
            if self.cfg.threads:
                import torch

                torch.set_num_threads(self.cfg.threads)
            self._gens = self._load()
            if self.cfg.prerank:
                from alignkit.reward_model import RewardScorer

                self._scorer = RewardScorer.load(self.cfg.prerank)  # refuses one that failed its gate
        first, second = self._gens
        seed = self.cfg.seed + 2 * self.store.item_count()  # new seeds every batch, also after a restart
        convs = [msgs for _, msgs in batch]
        texts_a, texts_b = first(convs, seed), second(convs, seed + 1)
        scores_a = scores_b = [None] * len(convs)
        if self._scorer is not None:  # pre-ranking: the reward model's view of each answer, before any human's
            scores = self._scorer.score(convs + convs, list(texts_a) + list(texts_b))
            scores_a, scores_b = scores[:len(convs)], scores[len(convs):]
        made = 0
        for (pid, _), a, b, ra, rb in zip(batch, texts_a, texts_b, scores_a, scores_b):
            sim = similarity(a, b)
            flagged = sim >= self.cfg.near_duplicate or not a.strip() or not b.strip()
            meta_a, meta_b = replace(first.sampling, seed=seed).as_dict(), replace(second.sampling, seed=seed + 1).as_dict()
            if ra is not None:
                meta_a["reward_score"], meta_b["reward_score"] = round(ra, 6), round(rb, 6)
            self.store.add_item(pid, (a, first.name, meta_a), (b, second.name, meta_b), similarity=sim,
                                flagged=flagged)
            if flagged:
                self.flagged[pid] = self.flagged.get(pid, 0) + 1  # the prompt stays in todo(): regenerated
            else:
                made += 1
        return made

    def run(self, idle_s: float = 2.0) -> None:
        """Loop until every prompt is covered or stop is set; sleeps while annotators have enough open items."""
        try:
            while not self.stop.is_set():
                if not self.todo():
                    return
                if self.step() == 0:
                    self.stop.wait(idle_s)
        except BaseException as e:  # noqa: BLE001 - reported by the server's status line, never kills serving
            self.error = e

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name="collect-worker", daemon=True)
        self._thread.start()
        return self._thread
