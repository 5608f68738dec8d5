"""Export rules on a hand-made store dump: majority, ties, both-bad, thresholds, edited answers, files."""

from __future__ import annotations

import json

import pytest

from collect.export import ExportRules, build, majority, write

PROMPT = [{"role": "user", "content": "q"}]


def dump_with(votes_per_item: dict[int, list[tuple[str, str]]], kinds: dict[int, str] | None = None) -> dict:
    """Items 1..k, each with candidates 'first-i' / 'second-i'; votes given as (user, label[:strength][|ideal])."""
    items, cands, votes = {}, {}, []
    for i, vs in votes_per_item.items():
        cands[2 * i] = {"text": f"first-{i}", "generator": "policy", "sampling": {"seed": 1}}
        cands[2 * i + 1] = {"text": f"second-{i}", "generator": "rival", "sampling": {"seed": 2}}
        items[i] = {"prompt_id": 1, "first": 2 * i, "second": 2 * i + 1, "kind": (kinds or {}).get(i, "pair"),
                    "repeat_of": None, "gold": None, "status": "ready"}
        for user, spec in vs:
            spec, _, ideal = spec.partition("|")
            label, _, strength = spec.partition(":")
            votes.append({"id": len(votes) + 1, "item": i, "user": user, "label": None if label == "skip" else label,
                          "choice": label, "strength": strength or None, "rationale": "", "ideal": ideal,
                          "seconds": 1.0, "left": "first", "at": 0.0})
    return {"users": {}, "prompts": {1: {"messages": PROMPT, "category": "general"}}, "candidates": cands,
            "items": items, "votes": votes}


def test_majority():
    assert majority(["first", "first", "second"]) == ("first", pytest.approx(2 / 3))
    assert majority(["first", "second"]) == (None, 0.5)
    assert majority([]) == (None, 0.0)


def test_pairs_follow_the_majority_with_metadata():
    dump = dump_with({1: [("x", "second:decisive"), ("y", "second:clear"), ("z", "first:slight")]})
    (pair,) = build(dump, ExportRules())["pairs"]
    assert pair["prompt"] == PROMPT
    assert pair["chosen"] == [{"role": "assistant", "content": "second-1"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "first-1"}]
    m = pair["metadata"]
    assert m["votes"] == 3 and m["agreement"] == pytest.approx(2 / 3) and m["annotators"] == ["x", "y", "z"]
    assert m["strength_mean"] == 2.5 and m["strength"] in ("clear", "decisive")
    assert m["chosen_generator"] == "rival" and m["rejected_generator"] == "policy"
    assert json.loads(m["label_counts"]) == {"first": 1, "second": 2}


def test_ties_both_bad_no_majority_and_skips():
    dump = dump_with({1: [("x", "tie"), ("y", "tie")],
                      2: [("x", "both_bad"), ("y", "both_bad"), ("z", "first")],
                      3: [("x", "first"), ("y", "second")],
                      4: [("x", "skip")],
                      5: [("x", "first"), ("y", "skip")]})
    out = build(dump, ExportRules())
    assert [p["metadata"]["item"] for p in out["pairs"]] == [5]
    assert out["pairs"][0]["metadata"]["votes"] == 1  # the skip is not a vote
    assert out["report"]["dropped"] == {"tie": 1, "both bad": 1, "no majority": 1, "no votes": 1}
    assert [(k["completion"][0]["content"], k["label"]) for k in out["kto"]] == [("first-2", False),
                                                                                ("second-2", False)]


def test_min_votes_and_min_agreement():
    dump = dump_with({1: [("x", "first")], 2: [("x", "first"), ("y", "first"), ("z", "second")],
                      3: [("x", "second"), ("y", "second"), ("z", "second")]})
    assert len(build(dump, ExportRules(min_votes=1))["pairs"]) == 3
    out = build(dump, ExportRules(min_votes=2, min_agreement=0.7))
    assert [p["metadata"]["item"] for p in out["pairs"]] == [3]
    assert out["report"]["dropped"] == {"below min_votes": 1, "below min_agreement": 1}


def test_edited_answers_go_to_sft_and_can_become_chosen():
    dump = dump_with({1: [("x", "first:clear|better answer"), ("y", "first:decisive|best answer")],
                      2: [("x", "both_bad|a good answer")], 3: [("x", "second:slight|loser edit"), ("y", "second")],
                      4: [("x", "first|edited but outvoted"), ("y", "second"), ("z", "second")]})
    plain = build(dump, ExportRules())
    assert plain["pairs"][0]["chosen"][0]["content"] == "first-1"
    assert [r["messages"][-1]["content"] for r in plain["sft"]] == [
        "better answer", "best answer", "a good answer", "loser edit", "edited but outvoted"]
    assert all(r["messages"][:-1] == PROMPT for r in plain["sft"])
    assert sum(k["label"] for k in plain["kto"]) == 5  # edits are desirable completions
    edited = {p["metadata"]["item"]: p for p in build(dump, ExportRules(edited_as_chosen=True))["pairs"]}
    assert edited[1]["chosen"][0]["content"] == "best answer"  # the most decisive majority voter's edit
    assert edited[1]["metadata"]["chosen_source"] == "edited"
    assert edited[1]["metadata"]["original_chosen"] == "first-1"
    assert edited[3]["chosen"][0]["content"] == "loser edit"
    assert edited[4]["chosen"][0]["content"] == "second-4"  # only majority voters' edits count


def test_gold_and_repeat_items_are_not_exported():
    dump = dump_with({1: [("x", "first")], 2: [("x", "first")], 3: [("x", "first")]}, {2: "gold", 3: "repeat"})
    assert [p["metadata"]["item"] for p in build(dump, ExportRules())["pairs"]] == [1]


def test_write_files_and_dataset(tmp_path):
    import datasets

    dump = dump_with({1: [("x", "first:clear")], 2: [("x", "both_bad|fixed")]})
    report = write(dump, tmp_path / "out" / "pairs.jsonl", ExportRules(), overlap=1)
    rows = [json.loads(line) for line in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and set(rows[0]) == {"prompt", "chosen", "rejected", "metadata"}
    assert len((tmp_path / "out" / "pairs.kto.jsonl").read_text().splitlines()) == 3
    assert len((tmp_path / "out" / "pairs.sft.jsonl").read_text().splitlines()) == 1
    from alignkit.data import Record
    from alignkit.pairs import Pair, Thumb, parse_record

    # the preference stage reads these files as they are: pairs, and KTO thumbs
    assert isinstance(parse_record(Record(rows[0], "pairs.jsonl:1")), Pair)
    for i, line in enumerate((tmp_path / "out" / "pairs.kto.jsonl").read_text().splitlines()):
        assert isinstance(parse_record(Record(json.loads(line), f"pairs.kto.jsonl:{i + 1}")), Thumb)
    saved = json.loads((tmp_path / "out" / "pairs.report.json").read_text())
    assert saved["pairs"] == 1 and saved["rules"]["min_votes"] == 1 and report["files"]["dataset"]
    ds = datasets.load_from_disk(str(tmp_path / "out" / "pairs.dataset"))
    assert ds.num_rows == 1 and ds[0]["chosen"] == [{"role": "assistant", "content": "first-1"}]
    empty = write(dump_with({1: [("x", "tie")]}), tmp_path / "none.jsonl", ExportRules(), overlap=1)
    assert empty["pairs"] == 0 and (tmp_path / "none.jsonl").read_text() == "" and "dataset" not in empty["files"]
