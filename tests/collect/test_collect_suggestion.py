"""The judge's vote as a suggestion to people (queue.show_judge), the unsure-first queue order, the anchoring
numbers, judge_weight in export, and the in-place upgrade of stores made before these columns existed.
Store tests run on SQLite and PostgreSQL (marker `postgres`)."""

from __future__ import annotations

import pytest
from collect_support import PASSWORD, make_store
from sqlalchemy import select, text

from collect.judge import run_judge, suggestion
from collect.store import Assignment, Item, Store

HOUSE = "I can't help with that. Building a weapon can hurt people."
ANSWER = "Preheat the oven to 200 C, season the potatoes and roast them for 40 minutes."
OTHER = "Roast them at 200 C for 40 minutes, turning once."


def _judged_store(url, overlap=2, show_judge=True):
    """Three items, the rules judge has voted: item 1 (harmful: answer first, refusal second) → second; item 2
    (general: both answer) → unsure, skipped; item 3 (general: refusal first, answer second) → second."""
    store = make_store(url, overlap=overlap, repeat_every=0, show_judge=show_judge)
    store.add_prompts([{"prompt": [{"role": "user", "content": "How do I make a pipe bomb?"}], "category": "harmful"},
                       {"prompt": [{"role": "user", "content": "How do I roast carrots?"}], "category": "general"},
                       {"prompt": [{"role": "user", "content": "How do I roast potatoes?"}], "category": "general"}])
    texts = {1: (ANSWER, HOUSE), 2: (ANSWER, OTHER), 3: (HOUSE, ANSWER)}
    for pid, _ in store.prompts():
        store.add_item(pid, (texts[pid][0], "policy", {}), (texts[pid][1], "policy", {}))
    counts = run_judge(store, "judge-rules", "rules", "smollm2-135m-instruct")
    assert counts["skip"] == 1 and counts["a"] + counts["b"] == 2
    store.add_user("alice", "annotator", PASSWORD)
    return store


def test_a_suggestion_speaks_in_the_annotators_own_a_and_b():
    """The judge saw `first` on its left and voted `second` (the right answer, which answers)."""
    reason = "[rules] wants an answer; left refuses, right answers"
    same = suggestion("judge-rules", reason, "second", judge_left="first", shown_left="first")
    assert same == {"judge": "judge-rules", "choice": "b",
                    "text": "Judge judge-rules (rules): prefers B — wants an answer; A refuses, B answers"}
    # the annotator sees the pair the other way round: `second` is their A
    flipped = suggestion("judge-rules", reason, "second", judge_left="first", shown_left="second")
    assert flipped["choice"] == "a" and flipped["text"].endswith("prefers A — wants an answer; B refuses, A answers")


def test_unsure_items_go_to_people_first(store_url):
    """Without the flag the fullest item would come first (items 1 and 3 hold the judge's vote, item 2 none)."""
    store = _judged_store(store_url)
    assert store.dump()["items"][2]["judge_unsure"] and not store.dump()["items"][1]["judge_unsure"]
    first = store.next_item("alice")
    assert first.item_id == 2 and first.suggestion is None  # the judge was unsure: nothing to suggest
    receipt = store.submit("alice", first.assignment_id, "a", first.idempotency_key)
    assert receipt.next.item_id == 1  # then the fullest, oldest first, as before


def test_the_suggestion_is_shown_recorded_and_the_annotators_choice_is_what_counts(store_url):
    store = _judged_store(store_url)
    dump = store.dump()
    shown = store.next_item("alice")
    store.submit("alice", shown.assignment_id, "skip", shown.idempotency_key, then_next=False)  # the unsure item
    votes = {}
    for follow in (True, False):  # accept the suggestion on one item, override it on the other
        shown = store.next_item("alice")
        s = shown.suggestion
        assert s["judge"] == "judge-rules" and s["choice"] in ("a", "b")
        assert "prefers " + s["choice"].upper() in s["text"]
        # the judge's pick is `second` on both items: the refusal of the harmful prompt (item 1), the answer
        # to the general one (item 3), wherever this annotator sees it
        picked = dump["candidates"][dump["items"][shown.item_id]["second"]]["text"]
        assert (shown.left if s["choice"] == "a" else shown.right) == picked
        assert f"{s['choice'].upper()} {'refuses' if shown.item_id == 1 else 'answers'}" in s["text"]
        assert shown.as_dict()["suggestion"] == s
        choice = s["choice"] if follow else {"a": "b", "b": "a"}[s["choice"]]
        store.submit("alice", shown.assignment_id, choice, shown.idempotency_key, then_next=False)
        votes[shown.item_id] = choice
    mine = [v for v in store.dump()["votes"] if v["user"] == "alice" and v["label"]]
    assert {v["item"]: v["choice"] for v in mine} == votes
    assert all(v["suggested"] == "second" for v in mine)  # the judge's label, recorded with each vote
    anchoring = store_summary(store)["judge-rules"]
    assert anchoring["suggested_votes"] == 2 and anchoring["suggested_agreement"] == 0.5
    assert anchoring["unsuggested_votes"] == 0 and anchoring["unsuggested_agreement"] is None


def store_summary(store):
    from collect.agreement import summarize

    return summarize(store.dump(), store.overlap)["judge_agreement"]


def test_no_suggestion_unless_the_project_turns_it_on(store_url):
    store = _judged_store(store_url, show_judge=False)
    for _ in range(3):
        shown = store.next_item("alice")
        assert shown.suggestion is None and shown.as_dict()["suggestion"] is None
        store.submit("alice", shown.assignment_id, "a", shown.idempotency_key, then_next=False)
    assert [v["suggested"] for v in store.dump()["votes"] if v["user"] == "alice"] == [None, None, None]
    assert store_summary(store)["judge-rules"]["unsuggested_votes"] == 2


def test_a_second_judge_is_never_shown_the_first_ones_choice(tmp_path):
    store = _judged_store(f"sqlite:///{tmp_path}/c.db", overlap=3)
    run_judge(store, "judge-two", "rules", "smollm2-135m-instruct")
    with store.read() as s:
        assert s.scalars(select(Assignment.suggested).where(Assignment.suggested.is_not(None))).all() == []


def test_show_judge_comes_from_the_recipe_and_is_remembered(tmp_path):
    from alignkit.recipe import load_recipe
    from collect.config import CollectRecipe
    from collect.store import open_store

    url = f"sqlite:///{tmp_path}/c.db"
    recipe_file = tmp_path / "collect.yaml"
    recipe_file.write_text("queue: {show_judge: true}\n")
    recipe = load_recipe(str(recipe_file), CollectRecipe, [])
    assert open_store(url, recipe, create=True, remember=True).show_judge is True
    assert open_store(url).show_judge is True  # a later command without --config: the stored setting
    assert CollectRecipe().queue.show_judge is False  # the default: nothing can anchor annotators


def test_a_store_made_before_these_columns_is_upgraded_in_place(store_url):
    """The old schema: no items.judge_unsure (nor its index), no assignments.suggested. Opening it adds them and
    marks the items an old judge already skipped."""
    store = _judged_store(store_url, show_judge=False)
    with store.write() as s:
        s.execute(text("DROP INDEX ix_items_queue_unsure"))
        s.execute(text("ALTER TABLE items DROP COLUMN judge_unsure"))
        s.execute(text("ALTER TABLE assignments DROP COLUMN suggested"))
    store.close()
    reopened = Store(store_url, overlap=2)
    with reopened.read() as s:
        assert s.scalars(select(Item.id).where(Item.judge_unsure.is_(True))).all() == [2]
    assert reopened.next_item("alice").item_id == 2
    assert Store(store_url).dump()["votes"][0]["suggested"] is None  # opening again adds nothing twice


def test_judge_weight_counts_a_judge_vote_for_less():
    from collect.export import ExportRules, build, majority, rules_from

    # one person for each side and the judge on `second`: 2 : 1, or with weight 0.5, 1.5 : 1 (share 1.5 / 2.5)
    assert majority(["first", "second", "second"], [1, 1, 0.5]) == ("second", pytest.approx(0.6))
    # two people on `first`, two judges on `second`: 2 : 2 at weight 1 → no majority; 2 : 1 at 0.5 → first
    labels = ["first", "first", "second", "second"]
    assert majority(labels, [1, 1, 1, 1])[0] is None and majority(labels, [1, 1, 0.5, 0.5])[0] == "first"
    dump = {"items": {1: {"kind": "pair", "status": "ready", "prompt_id": 1, "first": 1, "second": 2}},
            "prompts": {1: {"messages": [{"role": "user", "content": "q"}], "category": None}},
            "candidates": {1: {"text": "one", "generator": "g"}, 2: {"text": "two", "generator": "g"}},
            "roles": {"j1": "judge", "j2": "judge"},
            "votes": [{"id": n, "item": 1, "user": u, "label": lab, "strength": None, "ideal": ""}
                      for n, (u, lab) in enumerate([("ann", "first"), ("bea", "first"), ("j1", "second"),
                                                    ("j2", "second")], 1)]}
    assert build(dump, ExportRules())["report"]["dropped"] == {"no majority": 1}
    (pair,) = build(dump, rules_from(None, judge_weight=0.5))["pairs"]
    assert pair["chosen"][0]["content"] == "one" and pair["metadata"]["agreement"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="judge_weight"):
        build(dump, ExportRules(judge_weight=0))


def test_export_takes_judges_and_judge_weight_from_the_recipe(tmp_path):
    from alignkit.recipe import load_recipe
    from collect.config import CollectRecipe
    from collect.export import rules_from

    recipe_file = tmp_path / "collect.yaml"
    recipe_file.write_text("export: {judges: exclude, judge_weight: 0.5, min_votes: 2}\n")
    export = load_recipe(str(recipe_file), CollectRecipe, []).export
    rules = rules_from(export, min_votes=None, judges=None)
    assert (rules.judges, rules.judge_weight, rules.min_votes) == ("exclude", 0.5, 2)
    assert rules_from(export, judges="only").judges == "only"  # a flag wins over the recipe
    recipe_file.write_text("export: {judge_weight: 0}\n")
    from alignkit.errors import UserError

    with pytest.raises(UserError, match="judge_weight must be positive"):
        load_recipe(str(recipe_file), CollectRecipe, [])
