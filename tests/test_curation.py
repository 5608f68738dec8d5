"""Curation: dedup, near-dedup, stable hash split, n-gram overlap, percentiles."""

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
    items = ["prefix " + ref[:-9] + " and more", "one two three four five six seven eight nine ten eleven twelve"]
    # item 0 holds "one … thirteen" (13 words); item 1 has only 12 of them in a row
    assert curation.contaminated(items, str, [ref]) == [0]


def test_percentiles_nearest_rank():
    """Nearest rank: p50 of 1..10 is the ceil(5)=5th value, p95 the ceil(9.5)=10th."""
    p = curation.percentiles(list(range(1, 11)), qs=(50, 95))
    assert p["p50"] == 5 and p["p95"] == 10 and p["max"] == 10
