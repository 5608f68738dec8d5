"""Preference data: pairs (and unpaired thumbs) from files, validated, curated and split.

Accepted record shapes (detected per record):
  conversational  {"prompt": [messages], "chosen": [messages], "rejected": [messages]}   (TRL, collect export)
  string          {"prompt": "…", "chosen": "…", "rejected": "…"}
  implicit        {"chosen": [messages], "rejected": [messages]}    shared prompt = the common leading turns
  hh              {"chosen": "\\n\\nHuman: …\\n\\nAssistant: …", "rejected": "…"}   Anthropic-HH transcripts
  unpaired        {"prompt": …, "completion": …, "label": true|false}   KTO thumbs (only where allowed)

Validation is this module's; curation is the same `curation.curate` as SFT records go through (dedup →
near-dedup → length, here drop or truncate → 13-gram decontamination), then a hash split on the prompt,
each step counted in the report.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

from alignkit import curation, data
from alignkit.errors import UserError

HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
# A truncated completion shorter than this is no longer a fair comparison: drop the pair instead.
MIN_COMPLETION_TOKENS = 8


@dataclass(frozen=True)
class Pair:
    """One preference pair: a prompt (messages ending with a user turn) and two assistant completions."""

    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]
    origin: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Thumb:
    """One unpaired judgement (KTO): a completion marked desirable (label True) or not."""

    prompt: list[dict]
    completion: list[dict]
    label: bool
    origin: str
    meta: dict = field(default_factory=dict)


@dataclass
class PreparedPairs:
    """Curated pairs per split (train/val/test), unpaired thumbs per split, step counts, input sha256s."""

    splits: dict[str, list[Pair]]
    report: dict[str, Any] = field(default_factory=dict)
    sha256s: dict[str, str] = field(default_factory=dict)
    unpaired: dict[str, list[Thumb]] = field(default_factory=lambda: {"train": [], "val": [], "test": []})


class Invalid(UserError):
    """A record that is well-formed but unusable as a pair; `reason` is its counter name in the report."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------- parsing one record


def detect_format(rec: dict) -> str | None:
    """The preference record shape of one raw record, or None."""
    if "label" in rec and "completion" in rec and "prompt" in rec:
        return "unpaired"
    if "chosen" not in rec or "rejected" not in rec:
        return None
    if "prompt" in rec:
        return "string" if isinstance(rec["prompt"], str) else "conversational"
    if isinstance(rec["chosen"], str):
        return "hh"
    return "implicit"


def parse_hh(text: Any, at: str, side: str) -> list[dict]:
    """An Anthropic-HH transcript ("\\n\\nHuman: …\\n\\nAssistant: …") as messages."""
    if not isinstance(text, str):
        raise UserError(f"{at}: field '{side}': expected an HH transcript string, got {type(text).__name__}")
    parts = HH_TURN.split(text)
    if parts[0].strip():
        raise UserError(f"{at}: field '{side}': text before the first '\\n\\nHuman:' turn: {parts[0][:60]!r}")
    if len(parts) < 3:
        raise UserError(f"{at}: field '{side}': no '\\n\\nHuman:' / '\\n\\nAssistant:' turns found")
    return [{"role": HH_ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]


def split_implicit(chosen: list[dict], rejected: list[dict], at: str) -> tuple[list, list, list]:
    """Split two full conversations into (shared prompt, chosen reply, rejected reply) at the last common
    assistant turn: the prompt is every turn both share, and each side must continue with assistant turns only."""
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == len(chosen) and k == len(rejected):
        raise Invalid(f"{at}: chosen equals rejected (identical transcripts)", "chosen_equals_rejected")
    prompt, c, r = chosen[:k], chosen[k:], rejected[k:]
    if not prompt or prompt[-1]["role"] != "user":
        raise Invalid(f"{at}: implicit prompt mismatch: the transcripts do not share a prompt ending with a user turn "
                      f"(they differ at turn {k + 1})", "prompt_mismatch")
    for side, turns in (("chosen", c), ("rejected", r)):
        if not turns:
            raise Invalid(f"{at}: field '{side}': empty side (no reply after the shared prompt)", "empty_side")
        if any(m["role"] != "assistant" for m in turns):
            raise Invalid(f"{at}: implicit prompt mismatch: chosen and rejected differ before their last assistant "
                          f"turn (turn {k + 1}), so no shared prompt can be split off", "prompt_mismatch")
    return prompt, c, r


def _msgs(value: Any, at: str, name: str, default_role: str) -> list[dict]:
    if isinstance(value, str):
        value = [{"role": default_role, "content": value}]
    if not isinstance(value, list):
        raise UserError(f"{at}: field '{name}': expected a string or a list of {{role, content}} messages, "
                        f"got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in data.ROLES:
            role = m.get("role") if isinstance(m, dict) else m
            raise UserError(f"{at}: field '{name}[{i}].role': expected one of {', '.join(sorted(data.ROLES))}, "
                            f"got {role!r}")
        if not isinstance(m.get("content"), str):
            raise UserError(f"{at}: field '{name}[{i}].content': expected a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _check_side(turns: list[dict], at: str, side: str) -> None:
    if not turns or not any(m["content"].strip() for m in turns):
        raise Invalid(f"{at}: field '{side}': empty side (no text)", "empty_side")
    if turns[-1]["role"] != "assistant":
        raise UserError(f"{at}: field '{side}': the last message must be the assistant's")


def parse_record(record: data.Record) -> Pair | Thumb:
    """Validate one raw record into a Pair (or a Thumb); raises UserError/Invalid naming file:line."""
    rec, at = record.data, record.origin
    fmt = detect_format(rec)
    meta = {k: v for k, v in rec.items() if k not in ("prompt", "chosen", "rejected", "completion", "label")}
    meta["format"] = fmt
    if fmt is None:
        raise UserError(f"{at}: unrecognized preference record with keys {sorted(rec)}; expected "
                        "'prompt'+'chosen'+'rejected', 'chosen'+'rejected' (implicit prompt / Anthropic-HH), "
                        "or 'prompt'+'completion'+'label' (unpaired)")
    if fmt == "unpaired":
        prompt = _msgs(rec["prompt"], at, "prompt", "user")
        completion = _msgs(rec["completion"], at, "completion", "assistant")
        if not isinstance(rec["label"], bool):
            raise UserError(f"{at}: field 'label': expected true or false, got {rec['label']!r}")
        _check_prompt(prompt, at)
        _check_side(completion, at, "completion")
        return Thumb(prompt, completion, rec["label"], at, meta)
    if fmt == "hh":
        prompt, chosen, rejected = split_implicit(parse_hh(rec["chosen"], at, "chosen"),
                                                  parse_hh(rec["rejected"], at, "rejected"), at)
    elif fmt == "implicit":
        prompt, chosen, rejected = split_implicit(_msgs(rec["chosen"], at, "chosen", "assistant"),
                                                  _msgs(rec["rejected"], at, "rejected", "assistant"), at)
    else:
        prompt = _msgs(rec["prompt"], at, "prompt", "user")
        chosen = _msgs(rec["chosen"], at, "chosen", "assistant")
        rejected = _msgs(rec["rejected"], at, "rejected", "assistant")
    _check_prompt(prompt, at)
    _check_side(chosen, at, "chosen")
    _check_side(rejected, at, "rejected")
    if _text(chosen) == _text(rejected):
        raise Invalid(f"{at}: chosen equals rejected ({_text(chosen)[:60]!r})", "chosen_equals_rejected")
    return Pair(prompt, chosen, rejected, at, meta)


def _check_prompt(prompt: list[dict], at: str) -> None:
    if not prompt or not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        raise Invalid(f"{at}: field 'prompt': empty prompt (no user text)", "empty_prompt")
    if prompt[-1]["role"] != "user":
        raise UserError(f"{at}: field 'prompt': the last prompt message must be the user's, got {prompt[-1]['role']!r}")


def _text(turns: list[dict]) -> str:
    return "\n".join(m["content"].strip() for m in turns)


# ---------------------------------------------------------------- keys for curation


def prompt_text(item: Pair | Thumb) -> str:
    """The split key: the prompt's user turns, so one prompt never sits in two splits."""
    return "\n".join(m["content"] for m in item.prompt if m["role"] == "user")


def full_text(item: Pair | Thumb) -> str:
    """Everything in a pair (or thumb): the dedup and decontamination key."""
    sides = [item.chosen, item.rejected] if isinstance(item, Pair) else [item.completion, [{"content": str(item.label)}]]
    return "\n".join([prompt_text(item)] + [_text(s) for s in sides])


# ---------------------------------------------------------------- length


def _lengths(tokenizer, prompt_and_replies: list[list[dict]]) -> list[int]:
    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in prompt_and_replies]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def _truncate(tokenizer, prompt: list[dict], reply: list[dict], max_tokens: int) -> list[dict] | None:
    """Cut the reply's last message so prompt + reply fits in max_tokens; None if too little would be left."""
    reply = [dict(m) for m in reply]
    for attempt in range(4):  # decode→encode is not always length-exact; a couple of passes settle it
        excess = _lengths(tokenizer, [prompt + reply])[0] - max_tokens
        if excess <= 0:
            return reply
        ids = tokenizer(reply[-1]["content"], add_special_tokens=False)["input_ids"]
        keep = len(ids) - excess - attempt
        if keep < MIN_COMPLETION_TOKENS:
            return None
        reply[-1]["content"] = tokenizer.decode(ids[:keep])
    return None


def fit_length(items: list, tokenizer, max_tokens: int, overlong: str, report: dict) -> list:
    """Drop (or truncate) items whose prompt + longest reply exceeds max_tokens; counts go into `report`."""
    seqs, owners = [], []
    for i, it in enumerate(items):
        for reply in ([it.chosen, it.rejected] if isinstance(it, Pair) else [it.completion]):
            seqs.append(it.prompt + reply)
            owners.append(i)
    longest = [0] * len(items)
    for i, n in zip(owners, _lengths(tokenizer, seqs)):
        longest[i] = max(longest[i], n)
    report["tokens"] = dict(curation.percentiles(longest))
    kept, too_long, truncated, dropped_after = [], 0, 0, 0
    for it, n in zip(items, longest):
        if n <= max_tokens:
            kept.append(it)
            continue
        too_long += 1
        if overlong == "drop":
            continue
        if isinstance(it, Pair):
            c = _truncate(tokenizer, it.prompt, it.chosen, max_tokens)
            r = _truncate(tokenizer, it.prompt, it.rejected, max_tokens)
            fixed = Pair(it.prompt, c, r, it.origin, {**it.meta, "truncated": True}) if c and r else None
            if fixed is not None and _text(c) == _text(r):
                fixed = None  # truncation cut away the only difference
        else:
            c = _truncate(tokenizer, it.prompt, it.completion, max_tokens)
            fixed = Thumb(it.prompt, c, it.label, it.origin, {**it.meta, "truncated": True}) if c else None
        if fixed is None:
            dropped_after += 1
        else:
            truncated += 1
            kept.append(fixed)
    report["too_long"] = too_long
    if overlong == "truncate":
        report["truncated"] = truncated
        report["too_long_dropped"] = dropped_after
    return kept


# ---------------------------------------------------------------- the whole preparation


LABELLERS = ("humans", "judge", "humans+judge")  # metadata.labelled_by of `alignkit collect export`


def labeller(item: Pair | Thumb) -> str:
    """Who labelled an exported pair (metadata.labelled_by), or a UserError naming the record."""
    exported = item.meta.get("metadata")
    who = exported.get("labelled_by") if isinstance(exported, dict) else None
    if who not in LABELLERS:
        raise UserError(f"{item.origin}: pairs.labelled_by keeps pairs by who labelled them, but this record's "
                        f"metadata.labelled_by is {who!r}; expected one of {', '.join(LABELLERS)} (pairs from "
                        "`alignkit collect export` carry it)")
    return who


def load_pairs(data_cfg, tokenizer, *, max_tokens: int | None = None,
               overlong: Literal["drop", "truncate"] = "drop", invalid: Literal["error", "drop"] = "error",
               allow_unpaired: bool = False, references: Sequence[str] | None = None,
               labelled_by: Sequence[str] | None = None) -> PreparedPairs:
    """Read, validate, curate and split the preference files of a recipe's `data:` section.

    `invalid="error"` stops at the first unusable pair (chosen == rejected, empty side, implicit-prompt
    mismatch) with a UserError naming file:line; `"drop"` counts them per reason instead. Unpaired
    thumbs are an error unless `allow_unpaired` (KTO). Raises UserError if no training pair is left.
    `references`: texts to decontaminate against (default: those registered with curation.use_references).
    `labelled_by`: keep only pairs whose metadata.labelled_by is one of these (people's, a judge's or both);
    the counts kept and left out per labeller go in the report.
    """
    if overlong not in ("drop", "truncate"):
        raise UserError(f"overlong: expected drop or truncate, got {overlong!r}")
    max_tokens = data_cfg.max_tokens if max_tokens is None else max_tokens
    files = data_cfg.files
    items: list[Pair | Thumb] = []
    formats: Counter = Counter()
    dropped: Counter = Counter()
    examples: dict[str, str] = {}
    by_labeller: Counter = Counter()
    read = 0
    for source in files:
        for record in data.read_records(source):
            read += 1
            try:
                item = parse_record(record)
            except Invalid as e:
                if invalid == "error":
                    raise UserError(f"{e} (set pairs.invalid=drop to skip such pairs)") from None
                dropped[e.reason] += 1
                examples.setdefault(e.reason, str(e))
                continue
            if isinstance(item, Thumb) and not allow_unpaired:
                raise UserError(f"{record.origin}: an unpaired record (prompt/completion/label) in a pairs file; "
                                "DPO needs chosen+rejected pairs; use the KTO recipe (recipes/smollm2/kto.yaml)")
            if labelled_by is not None:
                who = labeller(item)
                by_labeller[(who, who in labelled_by)] += 1
                if who not in labelled_by:
                    continue
            formats[item.meta["format"]] += 1
            items.append(item)
    report: dict[str, Any] = {"formats": dict(formats), "read": read}
    if labelled_by is not None:
        report["labelled_by"] = {"kept": {w: n for (w, keep), n in by_labeller.items() if keep},
                                 "left_out": {w: n for (w, keep), n in by_labeller.items() if not keep}}
    if dropped:
        report["invalid_dropped"] = dict(dropped)
        report["invalid_examples"] = examples
    items = curation.curate(items, data_cfg, report, text=full_text, references=references,
                            fit=lambda its, rep: fit_length(its, tokenizer, max_tokens, overlong, rep))
    splits = curation.split([it for it in items if isinstance(it, Pair)], prompt_text, data_cfg)
    unpaired = curation.split([it for it in items if isinstance(it, Thumb)], prompt_text, data_cfg)
    report["splits"] = {k: len(v) for k, v in splits.items()}
    if allow_unpaired:
        report["unpaired_splits"] = {k: len(v) for k, v in unpaired.items()}
    report["kept"] = len(items)
    if not splits["train"] and not unpaired["train"]:
        raise UserError(f"{', '.join(files)}: no usable pairs after validation ({_describe(report)}); "
                        "check the file, or loosen data.max_tokens / pairs.overlong")
    return PreparedPairs(splits, report, curation.input_sha256s(files), unpaired)


def _describe(report: dict[str, Any]) -> str:
    parts = [f"read={report['read']}"]
    parts += [f"{k}={v}" for k, v in report.get("invalid_dropped", {}).items()]
    if report.get("labelled_by"):
        parts.append(f"left out by pairs.labelled_by={sum(report['labelled_by']['left_out'].values())}")
    keys = ("exact_duplicates", "near_duplicates", "too_long", "too_long_dropped", "dropped_contaminated", "kept")
    return ", ".join(parts + [f"{k}={report[k]}" for k in keys if k in report])


# ---------------------------------------------------------------- to TRL datasets


def pair_row(pair: Pair) -> dict:
    """One pair in TRL's conversational preference format."""
    return {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}


def to_preference_dataset(pairs: Iterable[Pair]):
    """A `datasets.Dataset` with prompt/chosen/rejected message lists (TRL's conversational preference format)."""
    from datasets import Dataset

    rows = [pair_row(p) for p in pairs]
    return Dataset.from_list(rows) if rows else None


def pairs_to_kto(pairs: Iterable[Pair]) -> list[dict]:
    """Unpaired KTO rows: each pair gives (prompt, chosen, label True) and (prompt, rejected, label False)."""
    rows = []
    for p in pairs:
        rows.append({"prompt": p.prompt, "completion": p.chosen, "label": True})
        rows.append({"prompt": p.prompt, "completion": p.rejected, "label": False})
    return rows


def thumbs_to_kto(thumbs: Iterable[Thumb]) -> list[dict]:
    """Unpaired KTO rows from thumbs."""
    return [{"prompt": t.prompt, "completion": t.completion, "label": t.label} for t in thumbs]


def to_kto_dataset(rows: list[dict]):
    """A `datasets.Dataset` in TRL's conversational unpaired preference format (prompt, completion, label)."""
    from datasets import Dataset

    return Dataset.from_list(rows) if rows else None
