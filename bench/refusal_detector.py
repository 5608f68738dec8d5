"""Refusal detector: agreement with human labels and cost, against the prefix-match baseline, in one run.

    python bench/refusal_detector.py      # writes bench/results/refusal_detector.md

Rows: the real chat-model answers of ../shared/data/refusal_dev.jsonl (Llama-2-chat, Mistral-7B-Instruct;
two human annotators; the rules were written from them, so in-sample), and every labelled set in eval/data
(refusal_heldout5 was written blind to the rules and measured once, after they were final).

The cross-model check is the one the detector's design was chosen by: a learned combiner (scikit-learn
logistic regression over the rule families that fired plus the words of the answer's opening, trained on the
project's sets and ONE model's answers) scored on the OTHER model's answers, next to the plain rules. It did
not beat the rules in either direction, so the shipped detector stays rules only (no weights to ship).
"""

from __future__ import annotations

import platform
import re
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignkit import refusal  # noqa: E402
from eval import validation  # noqa: E402
from run_all import cpu_kind  # noqa: E402  (bench/ is on the path: the script's own folder)


def _features(r: dict) -> dict:
    verdict = refusal.classify(r["response"], r.get("prompt"))
    family = "first-person" if verdict.rule.startswith("refusal phrase") else verdict.rule
    out = {f"family={family}": 1.0, "rules": float(verdict.refusal),
           "prefix": float(refusal.prefix_match(r["response"]).refusal)}
    words = re.findall(r"[a-z']+", " ".join(refusal.sentences(r["response"])[:2]))[:40]
    out.update({f"w={w}": 1.0 for w in words})
    out.update({f"b={a}_{b}": 1.0 for a, b in zip(words, words[1:])})
    return out


def _combiner(train: list[dict]):
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = DictVectorizer()
    model = LogisticRegression(C=0.3, max_iter=2000).fit(vec.fit_transform([_features(r) for r in train]),
                                                         [r["refused"] for r in train])
    return lambda rows: [bool(p) for p in model.predict(vec.transform([_features(r) for r in rows]))]


def _rules(rows):
    return [refusal.classify(r["response"], r.get("prompt")).refusal for r in rows]


def _prefix(rows):
    return [refusal.prefix_match(r["response"]).refusal for r in rows]


def _cell(rows, detected) -> str:
    c = validation.confusion([r["refused"] for r in rows], detected)
    return f"{c['agreement']:.3f} | {c['precision']:.3f} | {c['recall']:.3f}"


def _cpu() -> str:
    return f"{platform.machine()}, {cpu_kind()}"


def main() -> None:
    if not validation.DEV.is_file():
        sys.exit(f"{validation.DEV}: the dev set is not beside this checkout")
    dev = validation.labelled_rows(validation.DEV)
    sets = {p.name: validation.labelled_rows(p) for p in sorted(validation.DATA.glob("refusal_*.jsonl"))}
    project = [r for name, rows in sets.items() if name != "refusal_heldout5.jsonl" for r in rows]
    lines = [f"# refusal detector — {datetime.now():%Y-%m-%d %H:%M}", "",
             f"Detector `{refusal.VERSION}`; machine {_cpu()}, Python {platform.python_version()}.", "",
             "| rows | n | rules agreement | precision | recall | prefix agreement | precision | recall |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    models = sorted({r["model"] for r in dev})
    for name, rows in [*((f"dev {m} (in-sample)", [r for r in dev if r["model"] == m]) for m in models),
                       ("dev, both (in-sample)", dev), *sets.items()]:
        lines.append(f"| {name} | {len(rows)} | {_cell(rows, _rules(rows))} | {_cell(rows, _prefix(rows))} |")
    lines += ["", "Cross-model: a learned combiner trained on the project's sets (heldout5 left out) + one model's "
              "answers, scored on the other model's answers:", "",
              "| trained on | scored on | combiner agreement | precision | recall | rules agreement | precision | recall |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for train_m, test_m in [(models[0], models[1]), (models[1], models[0])]:
        test = [r for r in dev if r["model"] == test_m]
        predict = _combiner(project + [r for r in dev if r["model"] == train_m])
        lines.append(f"| {train_m} | {test_m} | {_cell(test, predict(test))} | {_cell(test, _rules(test))} |")
    timed = dev * 3
    start = time.perf_counter()
    _rules(timed)
    rules_ms = (time.perf_counter() - start) / len(timed) * 1e6
    start = time.perf_counter()
    _prefix(timed)
    prefix_ms = (time.perf_counter() - start) / len(timed) * 1e6
    mean_chars = sum(len(r["response"]) for r in dev) / len(dev)
    lines += ["", f"Cost on one CPU core: rules {rules_ms:.0f} ms per 1,000 answers, prefix match {prefix_ms:.1f} ms "
              f"({rules_ms / prefix_ms:.0f}x); answers average {mean_chars:.0f} characters."]
    out = ROOT / "bench" / "results" / "refusal_detector.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
