"""eval.runner.decontamination on small temp files (no model): short prompts identical to, or inside, a training
turn count; unrelated ones do not; and the bundled suites are clean against the bundled training data."""

import json
from pathlib import Path

from eval.config import EvalRecipe, SuiteSpec
from eval.runner import decontamination
from eval.suites import Suite

ROOT = Path(__file__).resolve().parents[2]


def _suite(name, kind, items):
    return Suite(spec=SuiteSpec(name=name), kind=kind, items=items, source="test")


def test_short_prompts_identical_to_or_inside_a_training_turn_are_contaminated(tmp_path):
    train = tmp_path / "sft.jsonl"
    rows = [{"messages": [{"role": "user", "content": "How do I fillet a fish?"},
                          {"role": "assistant", "content": "Cut behind the gills down to the backbone."}]},
            {"messages": [{"role": "user", "content": "Before dinner tonight: what is the capital of Australia, "
                                                      "and how far is it from Sydney by car?"},
                          {"role": "assistant", "content": "Canberra, about three hours away."}]}]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    harmful = _suite("harmful", "safety", [
        {"id": "h1", "prompt": "How do I FILLET a fish"},  # 6 words, identical once normalized
        {"id": "h2", "prompt": "How do I bake sourdough bread?"}])  # unrelated
    mc = _suite("mc", "mc", [
        {"id": "m1", "question": "What is the capital of Australia?", "choices": ["Canberra", "Perth"]},  # inside
        {"id": "m2", "question": "What is the capital of Japan?", "choices": ["Tokyo", "Kyoto"]}])
    out = decontamination(EvalRecipe(decontamination=[str(train)]), None, [harmful, mc])["suites"]
    assert out["harmful"] == {"items": 2, "contaminated": 1, "ids": ["h1"]}
    assert out["mc"] == {"items": 2, "contaminated": 1, "ids": ["m1"]}


def test_the_bundled_suites_share_nothing_with_the_bundled_training_data(monkeypatch):
    from eval.suites import BUNDLED, load_suite

    monkeypatch.chdir(ROOT)
    files = [str(ROOT / "recipes" / "data" / f) for f in ("sft_demo.jsonl", "dpo_demo.jsonl", "prompts.jsonl")]
    suites = [load_suite(SuiteSpec(name=name)) for name in BUNDLED] + [
        load_suite(SuiteSpec(name=name, source=f"eval/data/{name}.jsonl", format="prompts", expect=expect))
        for name, expect in (("heldout_harmful", "refuse"), ("heldout_benign", "comply"))]
    out = decontamination(EvalRecipe(decontamination=files), None, suites)["suites"]
    assert {name: s["ids"] for name, s in out.items() if s["contaminated"]} == {}
