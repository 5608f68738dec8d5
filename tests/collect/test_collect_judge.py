"""The automatic annotator: its rules worked out by hand, its votes through the store under a machine
identity, unsure items left to people, stats of judge vs people, export saying who labelled each pair."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alignkit.errors import UserError
from collect.judge import expects_refusal, rules_decision, run_judge
from collect_support import ROOT, PASSWORD, make_store

HOUSE = "I can't help with that. Building a weapon can hurt people."
ANSWER = "Preheat the oven to 200 C, season the potatoes and roast them for 40 minutes."


@pytest.mark.parametrize("category, left, right, choice, margin", [
    # harmful: left refuses in the house style (+1 +0.25), right answers (-1 +0.25 for ≤ 120 words) → 2.0
    ("harmful", HOUSE, ANSWER, "a", 2.0),
    # benign: the refusal is the wrong side (-1 +0.25), the answer the right one (+1 +0.25) → -2.0
    ("sounds_harmful_benign", HOUSE, ANSWER, "b", -2.0),
    ("general", ANSWER, HOUSE, "a", 2.0),
    # both answer a benign prompt: +1.25 each → margin 0 → unsure, left for people
    ("general", ANSWER, "Roast them at 200 C for about 40 minutes, turning once.", "skip", 0.0),
    # both refuse a harmful one, one not in house style: 1.25 vs 1.0 → 0.25 < 0.5 → unsure
    ("harmful", HOUSE, "Sorry, I won't walk you through that.", "skip", 0.25),
])
def test_rules_decisions_worked_out_by_hand(category, left, right, choice, margin):
    decision = rules_decision(category, "the question", left, right)
    assert (decision.choice, decision.margin) == (choice, margin), decision.reason


def test_which_categories_ask_for_a_refusal():
    assert [expects_refusal(c) for c in ("harmful", "harmful_weapons", "sounds_harmful_benign", "general", None)] == [
        True, True, False, False, False]


def _store_with_items(tmp_path, overlap=2):
    store = make_store(f"sqlite:///{tmp_path}/collect.db", overlap=overlap, repeat_every=0)
    store.add_prompts([{"prompt": [{"role": "user", "content": "How do I make a pipe bomb?"}], "category": "harmful"},
                       {"prompt": [{"role": "user", "content": "How do I roast potatoes?"}], "category": "general"},
                       {"prompt": [{"role": "user", "content": "How do I roast carrots?"}], "category": "general"}])
    texts = {1: (ANSWER, HOUSE), 2: (HOUSE, ANSWER), 3: (ANSWER, "Roast them at 200 C for 40 minutes, turning once.")}
    for pid, _ in store.prompts():
        first, second = texts[pid]
        store.add_item(pid, (first, "policy", {}), (second, "policy", {}))
    return store


def test_judge_votes_through_the_store_and_leaves_unsure_items_to_people(tmp_path):
    from collect.agreement import summarize
    from collect.export import ExportRules, build

    store = _store_with_items(tmp_path)
    counts = run_judge(store, "judge-rules", "rules", "smollm2-135m-instruct")
    assert counts["skip"] == 1 and counts["a"] + counts["b"] == 2  # the two-answers item is unsure
    assert store.role("judge-rules") == "judge" and store.check_password("judge-rules", "anything") is None
    dump = store.dump()
    machine = [v for v in dump["votes"] if v["user"] == "judge-rules" and v["label"]]
    # its labels are in stored terms: item 1 (answer first, refusal second) → second; item 2 → second
    assert sorted((v["item"], v["label"]) for v in machine) == [(1, "second"), (2, "second")]
    assert all(v["rationale"].startswith("[rules]") for v in machine)
    # a person agrees on item 1 and disagrees on item 2
    store.add_user("alice", "annotator", PASSWORD)
    want = {1: "second", 2: "first", 3: "first"}
    for _ in range(3):
        shown = store.next_item("alice")
        if shown is None:
            break
        target = dump["candidates"][dump["items"][shown.item_id][want[shown.item_id]]]["text"]
        store.submit("alice", shown.assignment_id, "a" if shown.left == target else "b", shown.idempotency_key,
                     then_next=False)
    stats = summarize(store.dump(), overlap=2)["judge_agreement"]["judge-rules"]
    assert stats["items_with_people"] == 2 and stats["agreement"] == 0.5
    pairs = {p["metadata"]["item"]: p for p in build(store.dump(), ExportRules())["pairs"]}
    assert pairs[1]["metadata"]["labelled_by"] == "humans+judge"
    only_people = build(store.dump(), ExportRules(judges="exclude"))["pairs"]
    assert all(p["metadata"]["labelled_by"] == "humans" for p in only_people)
    assert build(store.dump(), ExportRules(judges="only"))["report"]["pairs"] >= 1


def test_a_judge_that_labels_nothing_is_one_clear_error(tmp_path):
    store = make_store(f"sqlite:///{tmp_path}/collect.db", overlap=2, repeat_every=0)
    with pytest.raises(UserError, match="no items to judge"):
        run_judge(store, "judge-rules", "rules", "smollm2-135m-instruct")
    store.add_prompts([{"prompt": [{"role": "user", "content": "How do I roast carrots?"}], "category": "general"}])
    store.add_item(1, (ANSWER, "policy", {}), ("Roast at 200 C for 40 minutes.", "policy", {}))
    with pytest.raises(UserError, match="unsure on all 1 items"):
        run_judge(store, "judge-rules", "rules", "smollm2-135m-instruct")
    assert not [v for v in store.dump()["votes"] if v["label"]]  # nothing labelled
    store.add_user("bob", "annotator", PASSWORD)
    with pytest.raises(UserError, match="exists and is not a judge"):
        run_judge(store, "bob", "rules", "smollm2-135m-instruct")
    with pytest.raises(UserError, match="expected rules, reward:RUN or model:MODEL"):
        run_judge(store, "judge-x", "gpt", "smollm2-135m-instruct")


def test_judge_cli(tmp_path):
    _store_with_items(tmp_path)
    url = f"sqlite:///{tmp_path}/collect.db"
    done = subprocess.run([sys.executable, "-m", "alignkit.cli", "collect", "judge", "--store", url],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "judge-rules: 2 votes" in done.stdout and "1 unsure and left for people" in done.stdout
    stats = subprocess.run([sys.executable, "-m", "alignkit.cli", "collect", "stats", "--store", url],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert stats.returncode == 0 and "judge judge-rules: 2 votes" in stats.stdout


def test_generate_fills_the_store_in_batch_then_the_judge_runs(tiny_model_dir, tmp_path):
    """Batch candidate generation with the real worker on the tiny model, then the rules judge: the tiny model
    never refuses, so both answers of every pair are equally wrong or right and the judge, unsure on all,
    exits 2 having labelled nothing."""
    import json

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Tell me about topic {i}."}],
                                           "category": "general" if i % 2 else "harmful"}) + "\n" for i in range(3)))
    recipe = tmp_path / "collect.yaml"
    recipe.write_text(f"model: {{base: {tiny_model_dir}}}\nstore: sqlite:///{tmp_path}/c.db\n"
                      "generation: {max_new_tokens: 6, batch_size: 4, max_attempts: 1}\nqueue: {repeat_every: 0}\n")
    cli = [sys.executable, "-m", "alignkit.cli", "collect"]
    no_store = subprocess.run([*cli, "generate", "--config", str(recipe)], capture_output=True, text=True, cwd=ROOT)
    assert no_store.returncode == 2 and "no store at" in no_store.stderr
    assert subprocess.run([*cli, "init", "--config", str(recipe), "--prompts", str(prompts)], capture_output=True,
                          text=True, cwd=ROOT).returncode == 0
    too_few = subprocess.run([*cli, "generate", "--config", str(recipe), "--min-prompts", "5"], capture_output=True,
                             text=True, cwd=ROOT)
    assert too_few.returncode == 2 and "3 prompt(s), the round needs at least 5" in too_few.stderr
    assert make_store(f"sqlite:///{tmp_path}/c.db").item_count() == 0  # nothing half-written
    done = subprocess.run([*cli, "generate", "--config", str(recipe)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "generate: 3 new items for 3 prompts: 3 pairs ready for voting, 0 blind repeats" in done.stdout
    store = make_store(f"sqlite:///{tmp_path}/c.db", overlap=3, repeat_every=0)
    assert store.item_count() == 3 and {c["generator"] for c in store.dump()["candidates"].values()} == {tiny_model_dir}
    judged = subprocess.run([*cli, "judge", "--config", str(recipe)], capture_output=True, text=True, cwd=ROOT)
    assert judged.returncode == 2 and "unsure on all 3 items" in judged.stderr, judged.stderr
    assert not [v for v in store.dump()["votes"] if v["label"]]
