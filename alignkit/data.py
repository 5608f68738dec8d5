"""Reading instruction data: JSONL, JSON, CSV, Parquet files and Hub dataset ids, normalized to messages.

Accepted record shapes (detected per record):
  messages      {"messages": [{"role": "user", "content": …}, {"role": "assistant", …}]}
  prompt        {"prompt": "…" | [messages], "completion": "…" | [messages]}
  alpaca        {"instruction": …, "input": …, "output": …}
  sharegpt      {"conversations": [{"from": "human" | "gpt" | "system", "value": …}]}
Every problem is a UserError naming `file:line`, the field and what was expected.

`prepare_conversations` takes SFT records the rest of the way: read → validate → `curation.curate` (dedup,
near-dedup, length filter, decontamination) → hash split on the user turns, every step counted in the report
that `alignkit data check` prints and the manifest keeps.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from alignkit import curation
from alignkit.errors import UserError

ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool"}
FILE_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet"}


@dataclass(frozen=True)
class Record:
    """One raw record and where it came from (`file:line`)."""

    data: dict
    origin: str


@dataclass(frozen=True)
class Conversation:
    """A validated conversation whose last message is the assistant's."""

    messages: list[dict]
    origin: str
    format: str


def read_records(source: str) -> list[Record]:
    """Raw records of a file or Hub dataset id (`org/name` or `org/name:split`)."""
    path = Path(source)
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        if not path.is_file():
            raise UserError(f"{source}: data file not found")
        reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
                  ".parquet": _read_parquet}.get(path.suffix.lower())
        if reader is None:
            raise UserError(f"{source}: unsupported file type (expected {', '.join(sorted(FILE_SUFFIXES))})")
        return reader(path)
    return _read_hub(source)


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; a line that is not a JSON object is a
    UserError naming `file:line`."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{n}: expected a JSON object per line, got {type(obj).__name__}")
            yield n, obj


def _read_jsonl(path: Path) -> list[Record]:
    return [Record(obj, f"{path}:{n}") for n, obj in jsonl_objects(path)]


def _read_json(path: Path) -> list[Record]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list) or not all(isinstance(o, dict) for o in obj):
        raise UserError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
    return [Record(o, f"{path}:record {i + 1}") for i, o in enumerate(obj)]


def _read_csv(path: Path) -> list[Record]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        # line_num counts physical lines, so multi-line quoted cells still point at the right place
        return [Record({k: _maybe_json(v) for k, v in row.items()}, f"{path}:{reader.line_num}") for row in reader]


def _read_parquet(path: Path) -> list[Record]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise UserError(f"{path}: unreadable Parquet file ({e})") from None
    return [Record(_plain(row), f"{path}:row {i + 1}") for i, row in enumerate(frame.to_dict("records"))]


def _read_hub(source: str) -> list[Record]:
    name, _, split = source.partition(":")
    if name.count("/") != 1:
        raise UserError(f"{source}: data file not found (and not a Hub dataset id like org/name[:split])")
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # offline / missing dataset errors come in several types
        raise UserError(f"dataset '{source}': cannot load from the Hugging Face Hub ({str(e).splitlines()[0][:160]});"
                        " offline (HF_HUB_OFFLINE=1), download it and pass a local file instead") from None
    return [Record(_plain(row), f"{source}:row {i + 1}") for i, row in enumerate(ds)]


def _maybe_json(value: str) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _plain(value: Any) -> Any:
    """numpy arrays and scalars from Parquet → Python lists and scalars."""
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def detect_format(data: dict) -> str | None:
    """The record shape of one raw record, or None."""
    if "messages" in data:
        return "messages"
    if "conversations" in data:
        return "sharegpt"
    if "instruction" in data and "output" in data:
        return "alpaca"
    if "prompt" in data and "completion" in data:
        return "prompt"
    return None


def to_conversation(record: Record) -> Conversation:
    """Validate one record and normalize it to messages ending with an assistant turn."""
    data, at = record.data, record.origin
    fmt = detect_format(data)
    if fmt == "messages":
        messages = _messages(data["messages"], at, "messages")
    elif fmt == "sharegpt":
        turns = data["conversations"]
        if not isinstance(turns, list):
            raise UserError(f"{at}: field 'conversations': expected a list of {{from, value}} turns")
        messages = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or turn.get("from") not in SHAREGPT_ROLES:
                raise UserError(f"{at}: field 'conversations[{i}].from': expected one of "
                                f"{', '.join(SHAREGPT_ROLES)}, got {turn.get('from') if isinstance(turn, dict) else turn!r}")
            messages.append({"role": SHAREGPT_ROLES[turn["from"]], "content": turn.get("value")})
        messages = _messages(messages, at, "conversations")
    elif fmt == "alpaca":
        instruction, extra = _text(data, "instruction", at), data.get("input") or ""
        if not isinstance(extra, str):
            raise UserError(f"{at}: field 'input': expected a string, got {type(extra).__name__}")
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": _text(data, "output", at)}]
    elif fmt == "prompt":
        prompt, completion = data["prompt"], data["completion"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        completion = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
        if not isinstance(prompt, list) or not isinstance(completion, list):
            raise UserError(f"{at}: fields 'prompt'/'completion': expected strings or lists of messages")
        messages = _messages(prompt + completion, at, "prompt/completion")
    else:
        raise UserError(f"{at}: unrecognized record with keys {sorted(data)}; expected 'messages', "
                        "'prompt'+'completion', Alpaca 'instruction'+'output', or ShareGPT 'conversations'")
    if messages[-1]["role"] != "assistant":
        raise UserError(f"{at}: field '{fmt}': missing assistant turn (the last message must be the assistant's)")
    if not any(m["role"] == "user" for m in messages):
        raise UserError(f"{at}: field '{fmt}': no user turn")
    return Conversation(messages, at, fmt)


def _text(data: dict, key: str, at: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{at}: field '{key}': expected a non-empty string, got {value!r:.60}")
    return value


def _messages(messages: Any, at: str, field: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{at}: field '{field}': expected a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else m
            raise UserError(f"{at}: field '{field}[{i}].role': expected one of {', '.join(sorted(ROLES))}, got {role!r}")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise UserError(f"{at}: field '{field}[{i}].content': expected a non-empty string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def load_conversations(sources: Iterable[str]) -> tuple[list[Conversation], Counter]:
    """Read and validate every record of every source; returns conversations and a count per format."""
    conversations = [to_conversation(r) for s in sources for r in read_records(s)]
    if not conversations:
        raise UserError(f"{', '.join(sources)}: no records")
    return conversations, Counter(c.format for c in conversations)


def to_prompt_completion(conversation: Conversation) -> list[dict]:
    """One prompt/completion record per assistant turn, so the loss covers every assistant turn and nothing else."""
    rows, messages = [], conversation.messages
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and i > 0:
            rows.append({"prompt": messages[:i], "completion": [m]})
    return rows


def record_text(value: Any) -> str:
    """Every string inside a record (any shape: SFT, pairs, KTO), joined; for n-gram decontamination."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(record_text(v) for k, v in value.items() if k != "role")
    if isinstance(value, list):
        return "\n".join(record_text(v) for v in value)
    return ""


# ---------------------------------------------------------------- SFT records to curated splits


@dataclass
class Prepared:
    """Curated conversations per split, the step counts, and the input files' sha256s."""

    splits: dict[str, list[Conversation]]
    report: dict[str, Any] = field(default_factory=dict)
    sha256s: dict[str, str] = field(default_factory=dict)


def prompt_key(conversation: Conversation) -> str:
    """The split key: the conversation's user turns, so one prompt never sits in two splits."""
    return "\n".join(m["content"] for m in conversation.messages if m["role"] == "user")


def full_text(conversation: Conversation) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in conversation.messages)


def token_lengths(conversations: list[Conversation], tokenizer) -> list[int]:
    """Token count of each conversation rendered with the model's chat template."""
    texts = [tokenizer.apply_chat_template(c.messages, tokenize=False) for c in conversations]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def prepare_conversations(cfg, tokenizer, references: Sequence[str] | None = None) -> Prepared:
    """Run the curation steps of a recipe's `data:` section; raises UserError if nothing is left.

    `references`: texts to decontaminate against (default: those registered with curation.use_references)."""
    conversations, formats = load_conversations(cfg.files)
    report: dict[str, Any] = {"formats": dict(formats), "read": len(conversations)}

    def fit(items: list[Conversation], report: dict) -> list[Conversation]:
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
