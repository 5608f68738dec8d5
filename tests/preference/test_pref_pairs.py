"""alignkit.pairs: every accepted shape, every validation error (file:line), curation counts, TRL/KTO rows."""

from __future__ import annotations

import pytest

from alignkit.data import Record
from alignkit.errors import UserError
from alignkit.pairs import (Pair, load_pairs, pairs_to_kto, parse_hh, parse_record, to_kto_dataset,
                            to_preference_dataset)
from alignkit.recipe import DataConfig
from pref_helpers import short_pairs, write_jsonl

HH_CHOSEN = ("\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?"
             "\n\nHuman: How do I kill a Python process?\n\nAssistant: Run `kill <pid>`; find the pid with `ps`.")
HH_REJECTED = ("\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?"
               "\n\nHuman: How do I kill a Python process?\n\nAssistant: I can't help with violence.")


def cfg(path, **kw):
    return DataConfig(train=str(path), val_fraction=kw.pop("val_fraction", 0.2), near_dedup=False, **kw)


def parse(rec: dict):
    return parse_record(Record(rec, "pairs.jsonl:7"))


def test_hh_transcripts_split_at_the_last_common_assistant_turn():
    pair = parse({"chosen": HH_CHOSEN, "rejected": HH_REJECTED})
    assert pair.prompt == [{"role": "user", "content": "Hi there"},
                           {"role": "assistant", "content": "Hello! How can I help?"},
                           {"role": "user", "content": "How do I kill a Python process?"}]
    assert pair.chosen == [{"role": "assistant", "content": "Run `kill <pid>`; find the pid with `ps`."}]
    assert pair.rejected == [{"role": "assistant", "content": "I can't help with violence."}]
    assert pair.meta["format"] == "hh" and pair.origin == "pairs.jsonl:7"


def test_hh_parser_keeps_colons_and_newlines_inside_turns():
    msgs = parse_hh("\n\nHuman: a: b\nc\n\nAssistant: x\n\ny", "f:1", "chosen")
    assert msgs == [{"role": "user", "content": "a: b\nc"}, {"role": "assistant", "content": "x\n\ny"}]


def test_string_and_implicit_conversational_formats():
    s = parse({"prompt": "Q?", "chosen": "Yes.", "rejected": "No."})
    assert (s.prompt, s.chosen, s.rejected) == ([{"role": "user", "content": "Q?"}],
                                                [{"role": "assistant", "content": "Yes."}],
                                                [{"role": "assistant", "content": "No."}])
    user = {"role": "user", "content": "Q?"}
    i = parse({"chosen": [user, {"role": "assistant", "content": "Yes."}],
               "rejected": [user, {"role": "assistant", "content": "No."}]})
    assert i.prompt == [user] and i.meta["format"] == "implicit"


@pytest.mark.parametrize("record, message", [
    ({"prompt": "Q?", "chosen": "Same.", "rejected": " Same. "}, "pairs.jsonl:7: chosen equals rejected"),
    ({"chosen": HH_CHOSEN, "rejected": HH_CHOSEN}, "pairs.jsonl:7: chosen equals rejected"),
    ({"prompt": "Q?", "chosen": "Yes.", "rejected": "  "}, "pairs.jsonl:7: field 'rejected': empty side"),
    ({"chosen": "\n\nHuman: Q?\n\nAssistant: Yes.", "rejected": "\n\nHuman: Q?\n\nAssistant:"},
     "pairs.jsonl:7: field 'rejected': empty side"),
    ({"chosen": "\n\nHuman: Q1?\n\nAssistant: Yes.", "rejected": "\n\nHuman: Q2?\n\nAssistant: No."},
     "pairs.jsonl:7: implicit prompt mismatch"),
    ({"chosen": "\n\nHuman: Q?\n\nAssistant: A\n\nHuman: more\n\nAssistant: B",
      "rejected": "\n\nHuman: Q?\n\nAssistant: C\n\nHuman: more\n\nAssistant: D"},
     "pairs.jsonl:7: implicit prompt mismatch: chosen and rejected differ before their last assistant turn"),
    ({"prompt": "", "chosen": "Yes.", "rejected": "No."}, "pairs.jsonl:7: field 'prompt': empty prompt"),
])
def test_unusable_pairs_are_errors_naming_file_and_line(record, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(")):
        parse(record)


@pytest.mark.parametrize("record, message", [
    ({"prompt": "Q?", "chosen": "Yes."}, "unrecognized preference record"),
    ({"prompt": "Q?", "chosen": [{"role": "bot", "content": "x"}], "rejected": "No."}, r"field 'chosen\[0\].role'"),
    ({"chosen": "Human: no blank lines", "rejected": "x"}, "text before the first"),
    ({"prompt": "Q?", "completion": "A", "label": "yes"}, "field 'label': expected true or false"),
])
def test_malformed_records_are_errors_naming_file_and_line(record, message):
    with pytest.raises(UserError, match=message) as e:
        parse(record)
    assert str(e.value).startswith("pairs.jsonl:7:")


def test_load_pairs_reports_counts_splits_by_prompt_and_hashes(tmp_path, tokenizer):
    rows = short_pairs() + [short_pairs()[0]]  # one exact duplicate
    rows.append({**short_pairs()[1], "chosen": [{"role": "assistant", "content": "Another fine answer."}]})
    prepared = load_pairs(cfg(write_jsonl(tmp_path / "p.jsonl", rows)), tokenizer)
    r = prepared.report
    assert r["read"] == 22 and r["exact_duplicates"] == 1 and r["formats"] == {"conversational": 22}
    assert sum(r["splits"].values()) == r["kept"] == 21 and r["splits"]["val"] > 0
    where = {p.prompt[0]["content"]: s for s, ps in prepared.splits.items() for p in ps}
    same_prompt = [s for s, ps in prepared.splits.items() for p in ps if p.prompt == rows[1]["prompt"]]
    assert len(same_prompt) == 2 and len(set(same_prompt)) == 1  # one prompt never sits in two splits
    assert len(where) == 20
    assert list(prepared.sha256s) == [str(tmp_path / "p.jsonl")] and len(prepared.sha256s[str(tmp_path / "p.jsonl")]) == 64
    assert "contaminated_13gram" in r and r["tokens"]["max"] > 0


def test_overlong_pairs_are_dropped_or_truncated_with_a_count(tmp_path, tokenizer):
    rows = short_pairs(10)
    rows[0]["chosen"][0]["content"] = "word " * 300
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    dropped = load_pairs(cfg(path), tokenizer, max_tokens=120)
    assert dropped.report["too_long"] == 1 and dropped.report["kept"] == 9
    cut = load_pairs(cfg(path), tokenizer, max_tokens=120, overlong="truncate")
    assert cut.report["too_long"] == 1 and cut.report["truncated"] == 1 and cut.report["kept"] == 10
    (long_pair,) = [p for ps in cut.splits.values() for p in ps if p.meta.get("truncated")]
    n = len(tokenizer.apply_chat_template(long_pair.prompt + long_pair.chosen, tokenize=True))
    assert n <= 120 and long_pair.chosen[0]["content"].startswith("word word")


def test_invalid_pairs_can_be_dropped_and_counted(tmp_path, tokenizer):
    rows = short_pairs(10) + [{"prompt": "Q?", "chosen": "Same.", "rejected": "Same."}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(UserError, match=r"p.jsonl:11: chosen equals rejected .*pairs.invalid=drop"):
        load_pairs(cfg(path), tokenizer)
    prepared = load_pairs(cfg(path), tokenizer, invalid="drop")
    assert prepared.report["invalid_dropped"] == {"chosen_equals_rejected": 1} and prepared.report["kept"] == 10


def test_no_usable_pairs_is_an_error(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q?", "chosen": "Same.", "rejected": "Same."}])
    with pytest.raises(UserError, match="no usable pairs after validation .*read=1, chosen_equals_rejected=1"):
        load_pairs(cfg(path), tokenizer, invalid="drop")


def test_unpaired_rows_only_where_allowed(tmp_path, tokenizer):
    rows = short_pairs(6) + [{"prompt": "Is tea nice?", "completion": "Yes, warm and calming.", "label": True}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(UserError, match="p.jsonl:7: an unpaired record .* use the KTO recipe"):
        load_pairs(cfg(path), tokenizer)
    prepared = load_pairs(cfg(path, val_fraction=0.0), tokenizer, allow_unpaired=True)
    assert prepared.report["unpaired_splits"]["train"] == 1 and prepared.report["splits"]["train"] == 6


def test_trl_conversational_dataset_and_kto_rows():
    pair = Pair([{"role": "user", "content": "Q?"}], [{"role": "assistant", "content": "Yes."}],
                [{"role": "assistant", "content": "No."}], "f:1")
    ds = to_preference_dataset([pair])
    assert ds.column_names == ["prompt", "chosen", "rejected"] and ds[0]["chosen"][0]["content"] == "Yes."
    rows = pairs_to_kto([pair])
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [("Yes.", True), ("No.", False)]
    assert to_kto_dataset(rows).column_names == ["prompt", "completion", "label"]
    assert to_preference_dataset([]) is None


def test_pairs_can_be_kept_by_who_labelled_them(tmp_path, tokenizer):
    """pairs.labelled_by: the exported pairs of people, of a judge, or of both, by metadata.labelled_by; counts of
    what was kept and left out in the report; a record that does not say who labelled it names its line."""
    rows = short_pairs(12)
    for i, row in enumerate(rows):
        row["metadata"] = {"item": i, "labelled_by": ("humans", "judge", "humans+judge")[i % 3]}
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    everything = load_pairs(cfg(path), tokenizer)
    assert everything.report["kept"] == 12 and "labelled_by" not in everything.report
    people = load_pairs(cfg(path), tokenizer, labelled_by=["humans", "humans+judge"])
    assert people.report["labelled_by"] == {"kept": {"humans": 4, "humans+judge": 4}, "left_out": {"judge": 4}}
    kept = [p for ps in people.splits.values() for p in ps]
    assert len(kept) == 8 and {p.meta["metadata"]["labelled_by"] for p in kept} == {"humans", "humans+judge"}
    with pytest.raises(UserError, match=r"no usable pairs .*left out by pairs.labelled_by=8"):
        load_pairs(cfg(path), tokenizer, labelled_by=["judge"], max_tokens=8)  # and the judge's 4 too long
    rows[5].pop("metadata")
    with pytest.raises(UserError, match=r"p.jsonl:6: pairs.labelled_by .* metadata.labelled_by is None"):
        load_pairs(cfg(write_jsonl(tmp_path / "p.jsonl", rows)), tokenizer, labelled_by=["humans"])


@pytest.mark.parametrize("value", ["[robots]", "[]", "humans"])
def test_an_unknown_labeller_names_the_key(tmp_path, value):
    from alignkit.recipe import load_recipe
    from preference.config import DPORecipe

    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(f"data: {{train: pairs.jsonl}}\npairs: {{labelled_by: {value}}}\n")
    with pytest.raises(UserError, match="labelled_by"):
        load_recipe(str(recipe), DPORecipe)
