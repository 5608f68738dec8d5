"""SFT records from files to curated splits: read → validate → `curation.curate` (dedup, near-dedup, length
filter, decontamination) → hash split on the user turns.

Every step is counted in the report that `alignkit data check` prints and the manifest keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from alignkit import curation, data
from alignkit.errors import UserError


@dataclass
class Prepared:
    """Curated conversations per split, the step counts, and the input files' sha256s."""

    splits: dict[str, list[data.Conversation]]
    report: dict[str, Any] = field(default_factory=dict)
    sha256s: dict[str, str] = field(default_factory=dict)


def prompt_key(conversation: data.Conversation) -> str:
    """The split key: the conversation's user turns, so one prompt never sits in two splits."""
    return "\n".join(m["content"] for m in conversation.messages if m["role"] == "user")


def full_text(conversation: data.Conversation) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in conversation.messages)


def token_lengths(conversations: list[data.Conversation], tokenizer) -> list[int]:
    """Token count of each conversation rendered with the model's chat template."""
    texts = [tokenizer.apply_chat_template(c.messages, tokenize=False) for c in conversations]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def prepare_conversations(cfg, tokenizer, references: Sequence[str] | None = None) -> Prepared:
    """Run the curation steps of a recipe's `data:` section; raises UserError if nothing is left.

    `references`: texts to decontaminate against (default: those registered with curation.use_references)."""
    conversations, formats = data.load_conversations(cfg.files)
    report: dict[str, Any] = {"formats": dict(formats), "read": len(conversations)}

    def fit(items: list[data.Conversation], report: dict) -> list[data.Conversation]:
        lengths = token_lengths(items, tokenizer)
        report["tokens"] = dict(curation.percentiles(lengths))
        report["too_short"] = sum(n < cfg.min_tokens for n in lengths)
        report["too_long"] = sum(n > cfg.max_tokens for n in lengths)
        return [c for c, n in zip(items, lengths) if cfg.min_tokens <= n <= cfg.max_tokens]

    conversations = curation.curate(conversations, cfg, report, text=full_text, fit=fit, references=references)
    splits = curation.split(conversations, prompt_key, cfg)
    report["splits"] = {k: len(v) for k, v in splits.items()}
    report["kept"] = len(conversations)
    if not splits["train"]:
        raise UserError(f"{', '.join(cfg.files)}: empty dataset after filtering ({_describe(report)}); "
                        "loosen data.min_tokens/max_tokens or add records")
    return Prepared(splits, report, curation.input_sha256s(cfg.files))


def _describe(report: dict[str, Any]) -> str:
    keys = ("read", "exact_duplicates", "near_duplicates", "too_short", "too_long", "dropped_contaminated")
    return ", ".join(f"{k}={report[k]}" for k in keys if k in report)
