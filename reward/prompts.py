"""RLHF prompts: the train-split prompts of a pairs file, or a prompts file ({"prompt": "…" | [messages]} per line).

Prompts are split with the same stable hash as the pairs, so with the same data section and salt the prompts
the reward model was gated on (val/test) never become RLHF training prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alignkit import curation, data
from alignkit.errors import UserError
from alignkit.pairs import load_pairs, prompt_text


@dataclass
class Prompt:
    """One prompt (messages ending with the user's turn) and where it came from."""

    prompt: list[dict]
    origin: str


@dataclass
class Prompts:
    splits: dict[str, list[list[dict]]]
    report: dict[str, Any] = field(default_factory=dict)
    sha256s: dict[str, str] = field(default_factory=dict)


def parse_prompt(record: data.Record) -> Prompt:
    """A prompt-only record; a string prompt becomes one user message."""
    value = record.data.get("prompt")
    if isinstance(value, str):
        if not value.strip():
            raise UserError(f"{record.origin}: field 'prompt': expected a non-empty string")
        return Prompt([{"role": "user", "content": value}], record.origin)
    messages = data._messages(value, record.origin, "prompt")
    if messages[-1]["role"] != "user":
        raise UserError(f"{record.origin}: field 'prompt': the last prompt message must be the user's, "
                        f"got {messages[-1]['role']!r}")
    return Prompt(messages, record.origin)


def _key(item) -> str:
    return prompt_text(item)


def load_prompts(data_cfg, tokenizer, max_prompts: int | None = None) -> Prompts:
    """Training prompts of a recipe's `data:` section: unique, within data.max_tokens, hash-split like the pairs."""
    records = [r for source in data_cfg.files for r in data.read_records(source)]
    if not records:
        raise UserError(f"{', '.join(data_cfg.files)}: no records")
    paired = [r for r in records if "chosen" in r.data or "rejected" in r.data]
    report: dict[str, Any] = {"read": len(records)}
    if paired:
        prepared = load_pairs(data_cfg, tokenizer, overlong="truncate", invalid="drop")
        report.update(source="pairs", pairs=prepared.report["splits"])
        items = [Prompt(p.prompt, p.origin) for split in ("train", "val", "test") for p in prepared.splits[split]]
    else:
        missing = [r for r in records if "prompt" not in r.data]
        if missing:
            raise UserError(f"{missing[0].origin}: expected a 'prompt' field (a prompts file) or "
                            "'prompt'+'chosen'+'rejected' (a pairs file)")
        report["source"] = "prompts"
        items = [parse_prompt(r) for r in records]
    items, report["duplicate_prompts"] = curation.exact_dedup(items, _key)
    texts = [tokenizer.apply_chat_template(p.prompt, tokenize=False, add_generation_prompt=True) for p in items]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    report["too_long"] = sum(n > data_cfg.max_tokens for n in lengths)
    items = [p for p, n in zip(items, lengths) if n <= data_cfg.max_tokens]
    splits = curation.split(items, _key, data_cfg)
    if max_prompts is not None:
        splits["train"] = splits["train"][:max_prompts]
    report["splits"] = {k: len(v) for k, v in splits.items()}
    if not splits["train"]:
        raise UserError(f"{', '.join(data_cfg.files)}: no training prompts left ({report})")
    return Prompts({k: [p.prompt for p in v] for k, v in splits.items()}, report, curation.input_sha256s(data_cfg.files))
