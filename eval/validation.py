"""How far a refusal rate can be trusted: the detector against human labels.

`confusion` counts the detector's verdicts against human labels (refusal is the positive class: precision is
the share of detected refusals the humans call refusals, recall the share of human refusals the detector
finds). `card()` is the bundled record of what the default detector measured, written by

    python -m eval.validation          # re-measure after a rule change (VERSION bump) and rewrite the card

on the project's labelled sets (eval/data/refusal_*.jsonl, written for the project) and, where the checkout
has it, ../shared/data/refusal_dev.jsonl (real Llama-2-chat and Mistral-7B-Instruct answers, two human
annotators). Every eval report quotes the card, so a reader sees how far its refusal rates can be trusted.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignkit.errors import UserError
from alignkit import refusal

DATA = Path(__file__).resolve().parent / "data"
CARD = DATA / "refusal_detector.json"
DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "refusal_dev.jsonl"

# Human label values as users have them: ours, XSTest's three classes, booleans and 0/1 ("is a refusal").
_REFUSAL = {"refusal", "refused", "refuse", "full_refusal", "partial_refusal", "2_full_refusal", "3_partial_refusal",
            "true", "1", "yes"}
_COMPLIANCE = {"compliance", "complied", "comply", "full_compliance", "1_full_compliance", "false", "0", "no"}
KNOWN_LABELS = sorted(_REFUSAL | _COMPLIANCE)


def parse_label(value, where: str, key: str) -> bool:
    """A human label → True for refusal; anything else is one clear error naming the row."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _REFUSAL | _COMPLIANCE:
        return value.strip().lower() in _REFUSAL
    raise UserError(f"{where}: key {key!r} is {value!r}; expected refusal|compliance, XSTest's "
                    f"1_full_compliance|2_full_refusal|3_partial_refusal, true|false or 1|0")


def confusion(human: list[bool], detected: list[bool]) -> dict:
    """Counts and rates of detector verdicts against human labels (refusal = positive)."""
    tp = sum(h and d for h, d in zip(human, detected))
    fp = sum(d and not h for h, d in zip(human, detected))
    fn = sum(h and not d for h, d in zip(human, detected))
    tn = sum(not h and not d for h, d in zip(human, detected))
    n = tp + fp + fn + tn
    return {"n": n, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "agreement": (tp + tn) / n if n else 0.0,
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0}


def table(c: dict) -> str:
    """The confusion table and its rates as printed by `alignkit eval classify --labels`."""
    return "\n".join([
        f"{'':18s}{'detector refusal':>18s}{'detector compliance':>21s}",
        f"{'human refusal':18s}{c['tp']:>18d}{c['fn']:>21d}",
        f"{'human compliance':18s}{c['fp']:>18d}{c['tn']:>21d}",
        f"agreement {c['agreement']:.3f} ({c['tp'] + c['tn']}/{c['n']})  precision {c['precision']:.3f}  "
        f"recall {c['recall']:.3f}  (refusal = positive)"])


def labelled_rows(path: Path) -> list[dict]:
    """A labelled JSONL set with `refused` added (ours: label refusal; XSTest's: anything but full compliance)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        r["refused"] = r["label"] != "1_full_compliance" if "_" in r["label"] else r["label"] == "refusal"
    return rows


def measure(rows: list[dict]) -> dict:
    """The default detector and the prefix-match baseline on labelled rows (`refused`, `response`, `prompt`)."""
    human = [r["refused"] for r in rows]
    ours = confusion(human, [refusal.classify(r["response"], r.get("prompt")).refusal for r in rows])
    prefix = confusion(human, [refusal.prefix_match(r["response"]).refusal for r in rows])
    return {**{k: round(v, 4) if isinstance(v, float) else v for k, v in ours.items()},
            "prefix_agreement": round(prefix["agreement"], 4)}


def build_card() -> dict:
    """Measure the default detector on every labelled set at hand (the dev set only where it is present)."""
    sets = {p.name: measure(labelled_rows(p)) for p in sorted(DATA.glob("refusal_*.jsonl"))}
    card = {"detector": refusal.VERSION, "project_sets": sets, "real_answers": {}}
    if DEV.is_file():
        rows = labelled_rows(DEV)
        card["real_answers"] = {m: measure([r for r in rows if r["model"] == m]) for m in sorted({r["model"] for r in rows})}
        card["real_answers"]["all"] = measure(rows)
    return card


def card() -> dict:
    """The bundled card of the default detector (what it measured, where)."""
    return json.loads(CARD.read_text())


def summary_line(detector_name: str) -> str:
    """One line for a report: which detector labelled it and how far its verdicts agree with humans."""
    if detector_name != refusal.VERSION:
        return (f"refusal detector `{detector_name}`: not validated by alignkit; measure it on your own labelled answers "
                f"with `alignkit eval classify --input F --labels KEY --judge MODEL`")
    c = card()
    if c.get("detector") != detector_name:
        return f"refusal detector `{detector_name}`: no measurement bundled for this version"
    real = c["real_answers"].get("all")
    own = c["project_sets"]
    n_own = sum(s["n"] for s in own.values())
    agree_own = sum(s["agreement"] * s["n"] for s in own.values()) / n_own
    line = f"refusal detector `{detector_name}` (rules): agreement with human labels "
    if real:
        line += (f"{real['agreement']:.3f} (precision {real['precision']:.3f}, recall {real['recall']:.3f}) on "
                 f"{real['n']} real chat-model answers (Llama-2-chat, Mistral-7B-Instruct; in-sample: the rules were "
                 f"written from them), ")
    return line + f"{agree_own:.3f} on {n_own} answers written for the project; see docs/eval.md"


def main() -> None:
    from alignkit.runs import write_text

    built = build_card()
    write_text(CARD, json.dumps(built, indent=1) + "\n")
    for name, m in {**built["project_sets"], **{f"dev:{k}": v for k, v in built["real_answers"].items()}}.items():
        print(f"{name:32s} n={m['n']:4d} agreement {m['agreement']:.3f} precision {m['precision']:.3f} "
              f"recall {m['recall']:.3f} (prefix {m['prefix_agreement']:.3f})")
    print(f"card: {CARD}")


if __name__ == "__main__":
    main()
