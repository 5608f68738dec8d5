"""The judge model (`collect judge --judge model:MODEL`): its decision rule worked out by hand, its two readings
checked against an unbatched forward of the same model, its votes through the store under a machine identity,
and each bad judge spec one clear error (exit 2) with nothing labelled."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alignkit.errors import UserError
from collect.judge import run_judge
from collect.judge_model import INSTRUCTION, ModelJudge, conversation, letter_ids, model_decision
from collect_support import ROOT, make_store

REFUSAL = "I can't help with that. Building a weapon can hurt people."
ANSWER = "Preheat the oven to 200 C, season the potatoes and roast them for 40 minutes."


@pytest.mark.parametrize("forward, swapped, choice, margin", [
    (2.0, -1.0, "a", 1.5),     # left preferred whichever side it is shown on: (2 - -1) / 2
    (-1.0, 3.0, "b", -2.0),    # right preferred both ways
    (1.0, 0.5, "skip", 0.25),  # "A" both ways: the first position won, not an answer
    (-0.4, -2.0, "skip", 0.8),  # "B" both ways, however large the margin
    (0.3, -0.1, "skip", 0.2),  # consistent but below the 0.25 margin
])
def test_decisions_worked_out_by_hand(forward, swapped, choice, margin):
    decision = model_decision(forward, swapped, 0.25)
    assert decision.choice == choice and decision.margin == pytest.approx(margin), decision.reason


def test_its_reason_reads_right_in_an_annotators_swapped_view():
    """The suggestion repeats the reason in the annotator's A/B: every number stays a preference for one side."""
    from collect.judge import suggestion

    decision = model_decision(2.0, -1.0, 0.25)  # left preferred: +2 shown first, +1 shown second
    assert decision.reason == "log-odds +1.500 for left (left shown first +2.000, left shown second +1.000)"
    same = suggestion("judge-model", f"[model:m] {decision.reason}", "first", "first", "first")
    swapped = suggestion("judge-model", f"[model:m] {decision.reason}", "first", "first", "second")
    assert same["text"].endswith("prefers A — log-odds +1.500 for A (A shown first +2.000, A shown second +1.000)")
    assert swapped["text"].endswith("prefers B — log-odds +1.500 for B (B shown first +2.000, B shown second +1.000)")


def test_the_letters_must_be_single_tokens():
    from alignkit.models import load_tokenizer

    tokenizer, _ = load_tokenizer("smollm2-135m-instruct")
    a, b = letter_ids(tokenizer, "smollm2-135m-instruct")
    assert a != b and tokenizer.decode([a]) == "A" and tokenizer.decode([b]) == "B"

    class SplitsLetters:  # a vocabulary without single-letter tokens
        def encode(self, text, add_special_tokens=False):
            return [7, 8]

    with pytest.raises(UserError, match="splits 'A' into 2 tokens"):
        letter_ids(SplitsLetters(), "odd-model")


def test_a_multi_turn_prompt_reaches_the_judge_whole():
    assert conversation([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]) == "Hi"
    assert conversation([{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."},
                         {"role": "user", "content": "Another?"}]) == "User: Name a fruit.\nAssistant: Apple.\nUser: Another?"


def _unbatched(judge, question, a, b) -> float:
    """log P(A) − log P(B) from one forward pass of the single rendered row, no padding: the reference."""
    import torch

    content = INSTRUCTION.format(question=question, a=a, b=b)
    ids = judge.tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                              tokenize=True, return_dict=True)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(judge.model(input_ids=torch.tensor([ids])).logits[0, -1].float(), dim=-1)
    return float(logp[judge.letters[0]] - logp[judge.letters[1]])


def test_readings_are_both_orders_of_one_forward_each(tiny_model_dir):
    judge = ModelJudge(tiny_model_dir)
    question = "How do I roast potatoes?"
    long_answer = ANSWER + " Turn them once half-way and salt them at the end."  # rows of different lengths pad
    forward, swapped = judge.readings(question, long_answer, REFUSAL)
    assert forward == pytest.approx(_unbatched(judge, question, long_answer, REFUSAL), abs=1e-4)
    assert swapped == pytest.approx(_unbatched(judge, question, REFUSAL, long_answer), abs=1e-4)
    # the other way round the readings trade places, so the margin is exactly antisymmetric
    again = judge.readings(question, REFUSAL, long_answer)
    assert again == pytest.approx((swapped, forward), abs=1e-5)
    one, other = (judge.decide([{"role": "user", "content": question}], x, y, 0.0)
                  for x, y in ((long_answer, REFUSAL), (REFUSAL, long_answer)))
    assert one.margin == pytest.approx(-other.margin, abs=1e-5)


@pytest.fixture(scope="module")
def sharp_judge_dir(tiny_model) -> str:
    """The tiny random model with weights drawn 25x wider (std 0.5): its A/B readings depend on the answers
    enough that some items are read the same way round both ways (votes) and others by position (skips)."""
    return tiny_model("sharp-judge", initializer_range=0.5)


def _store(tmp_path, n=6):
    store = make_store(f"sqlite:///{tmp_path}/collect.db", overlap=2, repeat_every=0)
    store.add_prompts([{"prompt": [{"role": "user", "content": f"How do I roast vegetable number {i}?"}],
                        "category": "general"} for i in range(n)])
    for pid, _ in store.prompts():
        store.add_item(pid, (ANSWER * (1 + pid % 2), "policy", {}), (REFUSAL, "policy", {}))
    return store


def test_judge_model_votes_through_the_store(sharp_judge_dir, tmp_path):
    """Every item gets the vote its two readings call for (worked out item by item here), in stored first/second
    terms, under a machine identity; an item the model reads by position stays open for people."""
    store = _store(tmp_path)
    judge = ModelJudge(sharp_judge_dir)
    dump = store.dump()
    texts = {c: v["text"] for c, v in dump["candidates"].items()}
    expected = {}
    for item, row in dump["items"].items():  # both orders are read, so the stored order decides nothing
        question = dump["prompts"][row["prompt_id"]]["messages"][-1]["content"]
        forward, swapped = judge.readings(question, texts[row["first"]], texts[row["second"]])
        expected[item] = {"a": "first", "b": "second", "skip": None}[model_decision(forward, swapped, 0.0).choice]
    assert None in expected.values() and {"first", "second"} & set(expected.values())  # both kinds occur
    counts = run_judge(store, "judge-model", f"model:{sharp_judge_dir}", "smollm2-135m-instruct", 0.0)
    assert sum(counts.values()) == 6 and counts["skip"] == sum(v is None for v in expected.values())
    assert store.role("judge-model") == "judge" and store.check_password("judge-model", "anything") is None
    votes = {v["item"]: v for v in store.dump()["votes"] if v["user"] == "judge-model"}
    assert {i: v["label"] for i, v in votes.items()} == expected
    assert all(v["rationale"].startswith(f"[model:{sharp_judge_dir}] log-odds ") for v in votes.values())
    unsure = [i for i, it in store.dump()["items"].items() if it["judge_unsure"]]
    assert sorted(unsure) == sorted(i for i, label in expected.items() if label is None)


def test_a_judge_model_that_only_reads_positions_labels_nothing(tiny_model_dir, tmp_path):
    """The default tiny model answers "A" whichever answer is shown first: unsure on every item, exit 2, the
    message says the model chose by position, and nothing is labelled."""
    store = _store(tmp_path, n=3)
    done = subprocess.run([sys.executable, "-m", "alignkit.cli", "collect", "judge", "--store",
                           f"sqlite:///{tmp_path}/collect.db", "--judge", f"model:{tiny_model_dir}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "unsure on all 3 items" in done.stderr, done.stderr
    assert "picked the same position both ways on 3" in done.stderr
    assert not [v for v in store.dump()["votes"] if v["label"]]


@pytest.mark.parametrize("judge, message", [
    ("model:", "name a model"),
    ("model:/no/such/model-folder", "/no/such/model-folder"),
    ("gpt-4", "expected rules, reward:RUN or model:MODEL"),
])
def test_a_bad_judge_spec_is_one_clear_error(tmp_path, judge, message):
    store = make_store(f"sqlite:///{tmp_path}/collect.db", overlap=2, repeat_every=0)
    store.add_prompts([{"prompt": [{"role": "user", "content": "How do I roast carrots?"}], "category": "general"}])
    store.add_item(1, (ANSWER, "policy", {}), (REFUSAL, "policy", {}))
    done = subprocess.run([sys.executable, "-m", "alignkit.cli", "collect", "judge", "--store",
                           f"sqlite:///{tmp_path}/collect.db", "--judge", judge],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # one message, no traceback
    dump = store.dump()
    assert not [v for v in dump["votes"] if v["label"]] and not [u for u in store.users() if u["role"] == "judge"]
