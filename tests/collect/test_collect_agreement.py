"""Agreement and quality statistics against numbers worked out by hand (in each docstring)."""

from __future__ import annotations

import pytest

from collect import agreement as ag


def v(item, user, label, choice=None, seconds=1.0):
    choice = choice or {"first": "a", "second": "b"}.get(label, label)
    return {"item": item, "user": user, "label": label, "choice": choice, "seconds": seconds}


def test_cohen_kappa_for_one_pair():
    """r1 = f f s t, r2 = f s s t: p_o = 3/4; marginals r1 (.5 .25 .25), r2 (.25 .5 .25);
    p_e = .5·.25 + .25·.5 + .25·.25 = .3125; κ = (.75 - .3125) / (1 - .3125) = 0.636363…"""
    votes = [v(i, "r1", lab) for i, lab in enumerate(["first", "first", "second", "tie"])]
    votes += [v(i, "r2", lab) for i, lab in enumerate(["first", "second", "second", "tie"])]
    (row,) = ag.cohen_pairs(votes)
    assert row["pair"] == ("r1", "r2") and row["items"] == 4 and row["agreement"] == 0.75
    assert row["kappa"] == pytest.approx(0.636363, abs=1e-6)


def test_cohen_kappa_is_undefined_when_both_use_one_category():
    votes = [v(i, u, "tie") for i in range(3) for u in ("x", "y")]
    assert ag.cohen_pairs(votes)[0]["kappa"] is None
    assert ag.cohen_pairs(votes[:2], min_common=2) == []  # one common item is not enough


def test_fleiss_kappa_with_ties():
    """3 items × 3 raters: (f f f), (f f s), (s s t).
    P_i = 1, 1/3, 1/3 → P̄ = 5/9; p_j = f 5/9, s 3/9, t 1/9 → P_e = 35/81;
    κ = (5/9 - 35/81) / (1 - 35/81) = 10/46 = 0.217391…"""
    rows = [["first"] * 3, ["first", "first", "second"], ["second", "second", "tie"]]
    votes = [v(i, f"r{j}", lab) for i, labs in enumerate(rows) for j, lab in enumerate(labs)]
    out = ag.fleiss(votes, raters=3)
    assert out["items"] == 3 and out["kappa"] == pytest.approx(10 / 46, abs=1e-9)
    assert ag.fleiss(votes, raters=2) == {"items": 0, "kappa": None}


def test_krippendorff_alpha_nominal():
    """Units [a a], [a b], [b b]: o_aa = 2, o_ab = o_ba = 1, o_bb = 2; n_a = n_b = 3, n = 6;
    α = 1 - (n-1)·Σ_{c≠k} o / Σ_{c≠k} n_c n_k = 1 - 5·2/18 = 4/9.
    Units (f f f), (f f s), (s s t): o_ff = 3+1, o_fs = o_sf = 1, o_ss = 1, o_st = o_ts = 1; n_f 5, n_s 3,
    n_t 1, n = 9; α = 1 - 8·4 / (2·(15 + 5 + 3)) = 14/46."""
    assert ag.krippendorff_alpha([["a", "a"], ["a", "b"], ["b", "b"]]) == pytest.approx(4 / 9)
    rows = [["first"] * 3, ["first", "first", "second"], ["second", "second", "tie"]]
    assert ag.krippendorff_alpha(rows) == pytest.approx(14 / 46)
    assert ag.krippendorff_alpha([["a", "a"], ["a"]]) is None  # one category: undefined
    assert ag.krippendorff_alpha([["a", "b"], ["a", "b"], ["b", "a"]]) < 0  # systematic disagreement


def test_position_bias_counts_only_a_or_b_decisions():
    """Choices a a a b tie: 4 decisions, 3 left → .75; two-sided binomial p = 2·(4+1)/16 = 0.625."""
    votes = [v(1, "x", "first", "a"), v(2, "x", "second", "a"), v(3, "x", "first", "a"),
             v(4, "x", "first", "b"), v(5, "x", "tie")]
    assert ag.position_bias(votes) == {"x": {"decisions": 4, "left_rate": 0.75, "p_value": pytest.approx(0.625)}}


def test_time_gold_and_self_consistency():
    """Seconds 2 4 9 → median 4, total 15 s = .25 min. Gold 1 and 2 are `first`: x right on 1, tie on 2 → .5.
    Repeat 10 of item 1: x said first twice (1.0), y second then first (0.0)."""
    votes = [v(1, "x", "first", seconds=2), v(2, "x", "tie", seconds=4), v(10, "x", "first", seconds=9),
             v(1, "y", "second"), v(10, "y", "first")]
    assert ag.time_on_task(votes)["x"] == {"votes": 3, "median_s": 4, "total_min": 0.25}
    assert ag.gold_accuracy(votes, {1: "first", 2: "first"})["x"] == {"gold_items": 2, "accuracy": 0.5}
    assert ag.self_consistency(votes, {10: 1}) == {"x": {"repeats": 1, "consistency": 1.0},
                                                   "y": {"repeats": 1, "consistency": 0.0}}


def test_skips_are_not_labels():
    votes = [v(1, "x", "first"), {"item": 1, "user": "y", "label": None, "choice": "skip", "seconds": 1}]
    assert ag.by_item(votes) == {1: {"x": "first"}}
    assert ag.position_bias(votes)["x"]["decisions"] == 1 and "y" not in ag.position_bias(votes)


def test_summarize_a_store_dump():
    items = {1: {"kind": "pair", "status": "ready", "gold": None, "repeat_of": None},
             2: {"kind": "gold", "status": "ready", "gold": "first", "repeat_of": None},
             3: {"kind": "repeat", "status": "ready", "gold": None, "repeat_of": 1},
             4: {"kind": "pair", "status": "flagged", "gold": None, "repeat_of": None}}
    votes = [v(1, "x", "first"), v(1, "y", "first"), v(2, "x", "first"), v(2, "y", "second"), v(3, "x", "first")]
    s = ag.summarize({"items": items, "votes": votes}, overlap=2)
    assert (s["items"], s["flagged"], s["complete"], s["votes"]) == (2, 1, 2, 5)
    assert s["label_counts"] == {"first": 3, "second": 1}  # the repeat is not counted twice
    assert s["annotators"]["x"]["accuracy"] == 1.0 and s["annotators"]["y"]["accuracy"] == 0.0
    assert s["annotators"]["x"]["consistency"] == 1.0
    assert s["fleiss"]["items"] == 2
