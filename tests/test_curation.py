"""Curation: dedup, near-dedup, stable hash split, n-gram overlap, percentiles."""

import pytest

from alignkit import curation


def test_exact_dedup_ignores_case_space_and_punctuation():
    kept, dropped = curation.exact_dedup(["Hello, world!", "hello world", "other"], key=str)
    assert kept == ["Hello, world!", "other"] and dropped == 1


def test_near_dedup_drops_one_word_edits_only():
    """17 words → 15 word-3-grams; changing word 15 changes 3 of them: Jaccard = 12 / 18 = 0.67 ≥ 0.5."""
    base = "the quick brown fox jumps over the lazy dog near the quiet river bank today at noon"
    near = base.replace("today", "tomorrow")  # 1 of 17 words changed
    far = "a completely different sentence about cooking pasta with garlic and olive oil for dinner tonight"
    kept, dropped = curation.near_dedup([base, near, far], key=str, threshold=0.5)
    assert kept == [base, far] and dropped == 1


def test_split_is_stable_when_the_dataset_grows():
    """A record's split depends on its own key only: adding 1,000 records moves none of the first 1,000."""
    first = [f"question {i}" for i in range(1000)]
    before = {k: curation.split_of(k, 0.1, 0.1) for k in first}
    grown = first + [f"new question {i}" for i in range(1000)]
    after = curation.hash_split(grown, str, 0.1, 0.1)
    for name, items in after.items():
        for k in items:
            if k in before:
                assert before[k] == name
    # ~10% each: with 2,000 draws the binomial sd is ~13, so 140..260 is a > 4 sd band
    assert 140 < len(after["val"]) < 260 and 140 < len(after["test"]) < 260


def test_split_depends_on_salt():
    keys = [f"q{i}" for i in range(200)]
    a = [curation.split_of(k, 0.5, 0, "one") for k in keys]
    b = [curation.split_of(k, 0.5, 0, "two") for k in keys]
    assert a != b


def test_13gram_contamination():
    ref = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    items = ["prefix " + ref[:-9] + " and more",
             "one two three four five six seven eight nine ten eleven twelve and more"]
    # item 0 holds "one … thirteen" (13 words); item 1 has only 12 of them in a row
    assert curation.contaminated(items, str, [ref]) == [0]


TRAIN_TURNS = ["You are a helpful assistant.", "How do I fillet a fish?",
               "Quick question before dinner: how do I fillet a fish, and which knife should I use for it?",
               "Cut behind the gills down to the backbone, then run a flexible knife along the spine."]


def test_a_short_eval_prompt_identical_to_a_training_prompt_is_contaminated():
    """6 words: the old check turned a text under 13 words into one whole-text gram (none under 8), which never
    matched a 13-gram, so an eval prompt identical to a training prompt counted as clean. Case and punctuation
    do not count."""
    assert curation.contaminated(["how do I FILLET a fish"], str, ["How do I fillet a fish?"]) == [0]
    assert curation.contaminated(["How do I fillet a fish?"], str, [TRAIN_TURNS]) == [0]  # one turn of a record


def test_a_short_eval_prompt_inside_a_longer_training_turn_is_contaminated():
    """Every 6-gram of the 6-word prompt (the prompt itself) occurs in the 18-word user turn."""
    assert curation.contaminated(["How do I fillet a fish?"], str, [TRAIN_TURNS[2]]) == [0]
    # either way round: a short eval prompt inside a training record (what `data check` counts) is caught too
    assert curation.contaminated([" ".join(TRAIN_TURNS)], str, ["Which knife should I use for it?"]) == [0]


def test_an_unrelated_or_merely_similar_short_prompt_is_clean():
    items = ["How do I bake sourdough bread?", "How do I fillet a salmon?", "How do I gut a fish?"]
    assert curation.contaminated(items, str, [TRAIN_TURNS]) == []
    # words are matched in a row and within one turn: no gram spans two turns of a record
    assert curation.contaminated(["assistant how do i fillet"], str, [TRAIN_TURNS]) == []


def test_very_short_texts_only_match_when_identical():
    """Under MIN_CONTAINED words a phrase recurs by chance: "a flexible knife" is inside a turn but is no turn."""
    assert curation.MIN_CONTAINED == 5
    assert curation.contaminated(["fillet a fish?", "Fillet a fish"], str, [TRAIN_TURNS + ["Fillet a fish!"]]) == [0, 1]
    assert curation.contaminated(["a flexible knife"], str, [TRAIN_TURNS]) == []


def test_percentiles_nearest_rank():
    """Nearest rank: p50 of 1..10 is the ceil(5)=5th value, p95 the ceil(9.5)=10th."""
    p = curation.percentiles(list(range(1, 11)), qs=(50, 95))
    assert p["p50"] == 5 and p["p95"] == 10 and p["max"] == 10


REF = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"


def _cfg(**kw):
    from types import SimpleNamespace

    return SimpleNamespace(**{"dedup": True, "near_dedup": False, "near_dedup_threshold": 0.85,
                              "decontaminate": False, **kw})


def _drop_short(items, report):
    report["too_short"] = sum(len(t.split()) < 3 for t in items)
    return [t for t in items if len(t.split()) >= 3]


def test_curate_counts_every_step_in_order():
    """5 texts: "a b c d" twice (1 exact duplicate, case and punctuation ignored), "hi" (too short), one holding
    the 13 words "one … thirteen" of the reference (contaminated), one clean: 3 kept when decontaminating."""
    items = ["a b c d", "A b, c d!", "hi", "x " + REF[:-9], "the cat sat on the mat"]
    report: dict = {}
    kept = curation.curate(items, _cfg(decontaminate=True), report, text=str, fit=_drop_short, references=[REF])
    assert kept == ["a b c d", "the cat sat on the mat"]
    assert report == {"exact_duplicates": 1, "too_short": 1, "contaminated_13gram": 1, "dropped_contaminated": 1}


def test_curate_counts_contamination_without_dropping_and_takes_the_registered_references():
    curation.use_references(lambda: [REF])
    try:
        report: dict = {}
        kept = curation.curate(["x " + REF], _cfg(), report, text=str, fit=lambda items, r: items)
        assert kept == ["x " + REF] and report["contaminated_13gram"] == 1 and "dropped_contaminated" not in report
    finally:
        curation.use_references(None)


def test_decontaminate_without_references_is_a_user_error():
    from alignkit.errors import UserError

    with pytest.raises(UserError, match="data.decontaminate is set but no eval texts"):
        curation.curate(["x"], _cfg(decontaminate=True), {}, text=str, fit=lambda items, r: items, references=[])


def test_the_spine_reads_no_eval_files():
    """Decontamination references are passed in by the top floor (cli registers the eval suites' texts)."""
    import re
    from pathlib import Path

    spine = Path(curation.__file__).parent
    for path in spine.glob("*.py"):
        if path.name not in ("cli.py", "pipeline.py"):
            text = path.read_text()
            assert not re.search(r'"eval"\s*/\s*"data"|eval/data', text), path.name


def test_the_cli_registers_the_eval_suites_texts():
    from alignkit.cli import eval_texts

    texts = eval_texts()
    assert len(texts) > 500 and any("?" in t for t in texts)
    # read raw from the files, they must be the texts the eval stage loads: every prompt, question and passage
    from eval.config import SuiteSpec
    from eval.suites import BUNDLED, load_suite

    loaded = [str(item[k]) for name in BUNDLED for item in load_suite(SuiteSpec(name=name)).items
              for k in ("prompt", "question", "text", "goal") if item.get(k)]
    assert sorted(texts) == sorted(loaded)
