"""From files to curated splits: read → validate → dedup → near-dedup → length filter → decontaminate → split.

Every step is counted in the report that `alignkit data check` prints and the manifest keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit import curation, data
from alignkit.errors import UserError
from alignkit.runs import sha256_file


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


def prepare_conversations(cfg, tokenizer) -> Prepared:
    """Run the curation steps of a recipe's `data:` section; raises UserError if nothing is left."""
    conversations, formats = data.load_conversations(cfg.files)
    report: dict[str, Any] = {"formats": dict(formats), "read": len(conversations)}
    if cfg.dedup:
        conversations, report["exact_duplicates"] = curation.exact_dedup(conversations, full_text)
    if cfg.near_dedup:
        conversations, report["near_duplicates"] = curation.near_dedup(
            conversations, full_text, threshold=cfg.near_dedup_threshold)
    lengths = token_lengths(conversations, tokenizer)
    report["tokens"] = dict(curation.percentiles(lengths))
    kept = [(c, n) for c, n in zip(conversations, lengths) if cfg.min_tokens <= n <= cfg.max_tokens]
    report["too_short"] = sum(n < cfg.min_tokens for n in lengths)
    report["too_long"] = sum(n > cfg.max_tokens for n in lengths)
    conversations = [c for c, _ in kept]
    refs = curation.eval_texts(curation.bundled_eval_files())
    hits = set(curation.contaminated(conversations, full_text, refs)) if refs else set()
    report["contaminated_13gram"] = len(hits)
    if cfg.decontaminate and hits:
        conversations = [c for i, c in enumerate(conversations) if i not in hits]
        report["dropped_contaminated"] = len(hits)
    splits = curation.hash_split(conversations, prompt_key, cfg.val_fraction, cfg.test_fraction, cfg.split_salt)
    report["splits"] = {k: len(v) for k, v in splits.items()}
    report["kept"] = len(conversations)
    if not splits["train"]:
        raise UserError(f"{', '.join(cfg.files)}: empty dataset after filtering ({_describe(report)}); "
                        "loosen data.min_tokens/max_tokens or add records")
    sha256s = {f: sha256_file(f) for f in cfg.files if Path(f).is_file()}
    return Prepared(splits, report, sha256s)


def _describe(report: dict[str, Any]) -> str:
    keys = ("read", "exact_duplicates", "near_duplicates", "too_short", "too_long", "dropped_contaminated")
    return ", ".join(f"{k}={report[k]}" for k in keys if k in report)
