"""Votes → preference pairs in TRL's conversational format, plus the leftovers useful for KTO and SFT.

Rules (also in docs/collect.md):
1. Only generated items (`kind: pair`) are exported; gold items and blind repeats only measure annotators.
2. Skips are not votes. An item's counted votes are its labels: first, second, tie, both_bad.
3. Majority: the label with the most votes; a tie between the top labels is "no majority" and dropped.
4. `min_votes`: fewer counted votes → dropped. `min_agreement`: share of votes for the majority label
   below it → dropped.
5. Majority first/second → one pair: chosen = that answer, rejected = the other. With `edited_as_chosen`,
   an edited ideal answer written by a voter of the majority (the most decisive, then the earliest) becomes
   chosen instead, and the original winner is kept in metadata.
6. Majority tie → dropped. Majority both_bad → no pair; both answers go to the KTO file as undesirable.
7. Every non-empty edited ideal answer (from any kept or dropped item) goes to the SFT file, and to the KTO
   file as desirable.
8. Votes of a judge (`collect judge`, role `judge`) count like anyone's unless `judges: exclude` (people only)
   or `only`; `judge_weight` is what one judge vote counts for in the majority and its share (a person's
   vote: 1). Every pair says who labelled it in `metadata.labelled_by` (humans, judge, humans+judge).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from collect.agreement import LABELS, summarize

STRENGTH = {"slight": 1, "clear": 2, "decisive": 3}


@dataclass(frozen=True)
class ExportRules:
    min_votes: int = 1
    min_agreement: float = 0.0
    edited_as_chosen: bool = False
    judges: str = "include"  # include | exclude | only: which votes count — people's, the judge's (collect judge)
    judge_weight: float = 1.0  # one judge vote in the majority, against 1 for a person's


def rules_from(config=None, **given) -> ExportRules:
    """ExportRules from a recipe's `export:` section (or the defaults), where each value in `given` that is
    not None (a command-line flag) wins."""
    names = ExportRules.__dataclass_fields__
    base = {k: getattr(config, k) for k in names} if config is not None else {}
    return ExportRules(**{**base, **{k: v for k, v in given.items() if v is not None}})


def majority(labels: list[str], weights: list[float] | None = None) -> tuple[str | None, float]:
    """(label with the most (weighted) votes or None on a tie at the top, share of the votes' weight for it)."""
    if not labels:
        return None, 0.0
    totals: Counter = Counter()
    for label, w in zip(labels, weights or [1] * len(labels)):
        totals[label] += w
    (top, n), *rest = totals.most_common()
    if rest and rest[0][1] == n:
        return None, n / sum(totals.values())
    return top, n / sum(totals.values())


def build(dump: dict, rules: ExportRules) -> dict:
    """Pairs, KTO rows, SFT rows and a report of what was dropped and why."""
    items, prompts, cands = dump["items"], dump["prompts"], dump["candidates"]
    roles = dump.get("roles", {})
    if rules.judges not in ("include", "exclude", "only"):
        raise ValueError("judges: include, exclude or only")
    if not rules.judge_weight > 0:
        raise ValueError("judge_weight: a positive number")
    votes_of: dict[int, list[dict]] = {}
    for v in dump["votes"]:
        machine = roles.get(v["user"]) == "judge"
        if v["label"] in LABELS and not (rules.judges == "exclude" and machine) and not (rules.judges == "only"
                                                                                          and not machine):
            votes_of.setdefault(v["item"], []).append(v)
    pairs, kto, sft = [], [], []
    dropped: Counter = Counter()
    for item_id in sorted(items):
        item = items[item_id]
        if item["kind"] != "pair" or item["status"] != "ready":
            continue
        votes = votes_of.get(item_id, [])
        prompt = prompts[item["prompt_id"]]["messages"]
        for v in votes:
            if v["ideal"].strip():
                sft.append({"messages": prompt + [{"role": "assistant", "content": v["ideal"]}],
                            "metadata": {"item": item_id, "annotator": v["user"], "vote": v["id"]}})
                kto.append(_kto(prompt, v["ideal"], True, item_id, "edited"))
        if not votes:
            dropped["no votes"] += 1
            continue
        label, share = majority([v["label"] for v in votes],
                                [rules.judge_weight if roles.get(v["user"]) == "judge" else 1 for v in votes])
        if len(votes) < rules.min_votes:
            dropped["below min_votes"] += 1
            continue
        if label is None:
            dropped["no majority"] += 1
            continue
        if share < rules.min_agreement:
            dropped["below min_agreement"] += 1
            continue
        first, second = cands[item["first"]], cands[item["second"]]
        if label == "both_bad":
            kto += [_kto(prompt, c["text"], False, item_id, "both_bad") for c in (first, second)]
            dropped["both bad"] += 1
            continue
        if label == "tie":
            dropped["tie"] += 1
            continue
        won, lost = (first, second) if label == "first" else (second, first)
        winners = [v for v in votes if v["label"] == label]
        strengths = [STRENGTH[v["strength"]] for v in winners if v["strength"] in STRENGTH]
        chosen_text, source = won["text"], "generated"
        edits = sorted((v for v in winners if v["ideal"].strip()),
                       key=lambda v: (-STRENGTH.get(v["strength"] or "", 0), v["id"]))
        if rules.edited_as_chosen and edits:
            chosen_text, source = edits[0]["ideal"], "edited"
        mean = sum(strengths) / len(strengths) if strengths else None
        pairs.append({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen_text}],
            "rejected": [{"role": "assistant", "content": lost["text"]}],
            "metadata": {
                "item": item_id, "votes": len(votes), "agreement": share,
                "label_counts": json.dumps(dict(Counter(v["label"] for v in votes)), sort_keys=True),
                "strength": _strength_name(mean), "strength_mean": mean,
                "annotators": sorted({v["user"] for v in votes}),
                "labelled_by": _labelled_by(votes, roles),
                "chosen_source": source, "chosen_generator": won["generator"],
                "rejected_generator": lost["generator"], "original_chosen": won["text"],
                "category": prompts[item["prompt_id"]]["category"] or "",
                **_prerank(won, lost),
            },
        })
    return {"pairs": pairs, "kto": kto, "sft": sft,
            "report": {"pairs": len(pairs), "kto": len(kto), "sft": len(sft), "dropped": dict(dropped),
                       "rules": rules.__dict__}}


def _labelled_by(votes: list[dict], roles: dict) -> str:
    """humans | judge | humans+judge: whose votes made this pair (DPO can weight or filter on it)."""
    machine = sum(roles.get(v["user"]) == "judge" for v in votes)
    return "judge" if machine == len(votes) else "humans+judge" if machine else "humans"


def _prerank(won: dict, lost: dict) -> dict:
    """The pre-ranking reward model's scores of the chosen and rejected answer, when the worker recorded them."""
    a, b = (c.get("sampling", {}).get("reward_score") for c in (won, lost))
    if a is None or b is None:
        return {}
    return {"reward_chosen": a, "reward_rejected": b, "reward_agrees": a > b}


def _strength_name(mean: float | None) -> str:
    if mean is None:
        return ""
    return min(STRENGTH, key=lambda k: abs(STRENGTH[k] - mean))


def _kto(prompt: list, text: str, label: bool, item_id: int, source: str) -> dict:
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": text}], "label": label,
            "metadata": {"item": item_id, "source": source}}


def write(dump: dict, out: str | Path, rules: ExportRules, overlap: int, dataset: bool = True) -> dict:
    """Write OUT (pairs JSONL), OUT stem + .kto.jsonl / .sft.jsonl / .report.json, and a datasets folder."""
    from alignkit.runs import write_text

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = build(dump, rules)
    stem = out.with_suffix("")
    paths = {"pairs": out, "kto": stem.with_suffix(".kto.jsonl"), "sft": stem.with_suffix(".sft.jsonl")}
    for key, path in paths.items():
        write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result[key]))
    report = dict(result["report"], agreement=_agreement(dump, overlap),
                  files={k: str(p) for k, p in paths.items()})
    if dataset and result["pairs"]:  # datasets cannot save a zero-row table; the empty JSONL says it all
        import datasets

        target = stem.with_suffix(".dataset")
        datasets.Dataset.from_list(result["pairs"]).save_to_disk(str(target))
        report["files"]["dataset"] = str(target)
    write_text(stem.with_suffix(".report.json"), json.dumps(report, indent=2, default=str) + "\n")
    return report


def _agreement(dump: dict, overlap: int) -> dict:
    s = summarize(dump, overlap)
    return {"krippendorff_alpha": s["krippendorff_alpha"], "fleiss": s["fleiss"]}

