"""Label quality, as pure functions of the votes: agreement, position bias, time on task, gold accuracy, repeats.

A vote here is a dict with at least `item`, `user`, `label` (first | second | tie | both_bad, in the item's
stored order, so the random left/right order does not matter), `choice` (a | b | tie | both_bad | skip, as
shown), `seconds`. Skips carry no label and are left out of every agreement number. Ties and both-bad are
categories of their own in every statistic (nominal data).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter, defaultdict
from typing import Iterable

LABELS = ("first", "second", "tie", "both_bad")


def _labelled(votes: Iterable[dict]) -> list[dict]:
    return [v for v in votes if v.get("label") in LABELS]


def by_item(votes: Iterable[dict]) -> dict[int, dict[str, str]]:
    """item → {user: label}; a later vote of the same user on the same item replaces the earlier one."""
    out: dict[int, dict[str, str]] = defaultdict(dict)
    for v in _labelled(votes):
        out[v["item"]][v["user"]] = v["label"]
    return dict(out)


def cohen_pairs(votes: Iterable[dict], min_common: int = 2) -> list[dict]:
    """Cohen's κ for every annotator pair with at least `min_common` items in common (sklearn)."""
    from sklearn.metrics import cohen_kappa_score

    items = by_item(votes)
    users = sorted({u for labels in items.values() for u in labels})
    rows = []
    for u, w in itertools.combinations(users, 2):
        common = [i for i, labels in items.items() if u in labels and w in labels]
        if len(common) < min_common:
            continue
        a, b = [items[i][u] for i in common], [items[i][w] for i in common]
        agree = sum(x == y for x, y in zip(a, b)) / len(common)
        if len(set(a) | set(b)) == 1:
            kappa = None  # one category used by both: chance agreement is 1, κ is 0/0
        else:
            kappa = float(cohen_kappa_score(a, b, labels=list(LABELS)))
        rows.append({"pair": (u, w), "items": len(common), "agreement": agree, "kappa": kappa})
    return rows


def fleiss(votes: Iterable[dict], raters: int) -> dict:
    """Fleiss' κ over the items with exactly `raters` labels (statsmodels); None when fewer than 2 such items."""
    from statsmodels.stats.inter_rater import fleiss_kappa

    table = [[Counter(labels.values())[c] for c in LABELS]
             for labels in by_item(votes).values() if len(labels) == raters]
    if len(table) < 2 or raters < 2:
        return {"items": len(table), "kappa": None}
    value = float(fleiss_kappa(table, method="fleiss"))
    return {"items": len(table), "kappa": None if math.isnan(value) else value}


def krippendorff_alpha(units: Iterable[Iterable[str]]) -> float | None:
    """Krippendorff's α for nominal labels; units may have any number (≥2 counted) of labels.

    Coincidences: a unit with m labels adds 1/(m-1) for every ordered pair of its labels. With n_c the
    total per category and n the pairable total, α = 1 - (n-1) Σ_{c≠k} o_ck / Σ_{c≠k} n_c n_k.
    """
    o: Counter = Counter()
    for unit in units:
        values = list(unit)
        m = len(values)
        if m < 2:
            continue
        for i, j in itertools.permutations(range(m), 2):
            o[(values[i], values[j])] += 1 / (m - 1)
    n_c: Counter = Counter()
    for (c, _k), w in o.items():
        n_c[c] += w
    n = sum(n_c.values())
    expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k)
    if n <= 1 or expected == 0:
        return None  # a single category overall: disagreement is undefined
    observed = sum(w for (c, k), w in o.items() if c != k)
    return 1 - (n - 1) * observed / expected


def position_bias(votes: Iterable[dict]) -> dict[str, dict]:
    """Per annotator: how often the left answer won among A/B decisions, with a two-sided binomial p vs 0.5."""
    from scipy.stats import binomtest

    picks: dict[str, list[int]] = defaultdict(list)
    for v in votes:
        if v.get("choice") in ("a", "b"):
            picks[v["user"]].append(v["choice"] == "a")
    out = {}
    for user, xs in sorted(picks.items()):
        left = sum(xs)
        out[user] = {"decisions": len(xs), "left_rate": left / len(xs),
                     "p_value": float(binomtest(left, len(xs), 0.5).pvalue)}
    return out


def time_on_task(votes: Iterable[dict]) -> dict[str, dict]:
    """Per annotator: votes (skips included), median and total seconds from reservation to submit."""
    secs: dict[str, list[float]] = defaultdict(list)
    for v in votes:
        secs[v["user"]].append(float(v.get("seconds") or 0.0))
    return {u: {"votes": len(xs), "median_s": statistics.median(xs), "total_min": sum(xs) / 60}
            for u, xs in sorted(secs.items())}


def gold_accuracy(votes: Iterable[dict], gold: dict[int, str]) -> dict[str, dict]:
    """Per annotator: share of labelled gold items (item → correct label) answered correctly."""
    hits: dict[str, list[int]] = defaultdict(list)
    for v in _labelled(votes):
        if v["item"] in gold:
            hits[v["user"]].append(v["label"] == gold[v["item"]])
    return {u: {"gold_items": len(xs), "accuracy": sum(xs) / len(xs)} for u, xs in sorted(hits.items())}


def self_consistency(votes: Iterable[dict], repeat_of: dict[int, int]) -> dict[str, dict]:
    """Per annotator: share of blind repeats (repeat item → original item) labelled as the original."""
    labels = by_item(votes)
    same: dict[str, list[int]] = defaultdict(list)
    for rep, orig in repeat_of.items():
        for user, label in labels.get(rep, {}).items():
            if user in labels.get(orig, {}):
                same[user].append(label == labels[orig][user])
    return {u: {"repeats": len(xs), "consistency": sum(xs) / len(xs)} for u, xs in sorted(same.items())}


def reward_model_agreement(dump: dict) -> dict | None:
    """How often the annotators' majority picks the answer the pre-ranking reward model scored higher (items with
    a first/second majority and both scores); None when no pair was pre-ranked."""
    from collect.export import majority

    per_item: dict[int, list[str]] = {}
    for v in dump["votes"]:
        if v["label"] in ("first", "second", "tie", "both_bad"):
            per_item.setdefault(v["item"], []).append(v["label"])
    agree = n = 0
    for item_id, labels in per_item.items():
        item, cands = dump["items"][item_id], dump.get("candidates", {})
        scores = [(cands.get(item.get(k)) or {}).get("sampling", {}).get("reward_score") for k in ("first", "second")]
        label, _share = majority(labels)
        if item["kind"] != "pair" or None in scores or label not in ("first", "second") or scores[0] == scores[1]:
            continue
        n += 1
        agree += (label == "first") == (scores[0] > scores[1])
    return {"items": n, "agreement": agree / n} if n else None


def judge_agreement(votes: Iterable[dict], roles: dict[str, str]) -> dict[str, dict]:
    """Per judge (role `judge`): on items that people voted on too, how often its label is the people's
    majority label (items whose people tie at the top are left out); and, for anchoring, the share of
    people's votes that equal its label with its suggestion visible (`suggested`) and without (`unsuggested`)."""
    people: dict[int, Counter] = {}
    machine: dict[str, dict[int, str]] = {}
    votes = _labelled(votes)
    for v in votes:
        if roles.get(v["user"]) == "judge":
            machine.setdefault(v["user"], {})[v["item"]] = v["label"]
        else:
            people.setdefault(v["item"], Counter())[v["label"]] += 1
    out = {}
    for judge, labels in machine.items():
        agree = n = 0
        for item, label in labels.items():
            ranked = people.get(item, Counter()).most_common(2)
            if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
                continue
            n += 1
            agree += label == ranked[0][0]
        out[judge] = {"items_with_people": n, "votes": len(labels), "agreement": agree / n if n else None,
                      **_anchoring(votes, roles, labels)}
    return out


def _anchoring(votes: list[dict], roles: dict[str, str], judged: dict[int, str]) -> dict:
    follow: dict[str, list[bool]] = {"suggested": [], "unsuggested": []}
    for v in votes:
        if roles.get(v["user"]) != "judge" and judged.get(v["item"]) in ("first", "second"):
            follow["suggested" if v.get("suggested") else "unsuggested"].append(v["label"] == judged[v["item"]])
    return {f"{k}_votes": len(x) for k, x in follow.items()} | {
        f"{k}_agreement": sum(x) / len(x) if x else None for k, x in follow.items()}


def summarize(dump: dict, overlap: int) -> dict:
    """Every statistic above from a Store.dump(): what `collect stats` prints and the admin view shows."""
    items, votes = dump["items"], dump["votes"]
    judged = [v for v in votes if items[v["item"]]["kind"] != "repeat"]
    gold = {i: it["gold"] for i, it in items.items() if it["kind"] == "gold" and it["gold"]}
    repeats = {i: it["repeat_of"] for i, it in items.items() if it["kind"] == "repeat"}
    per_item = by_item(judged)
    complete = sum(1 for i, it in items.items()
                   if it["status"] == "ready" and it["kind"] != "repeat" and len(per_item.get(i, {})) >= overlap)
    annotators: dict[str, dict] = {}
    for user, t in time_on_task(votes).items():
        counts = Counter(v["choice"] for v in votes if v["user"] == user)
        annotators[user] = {"votes": t["votes"] - counts.get("skip", 0), "skips": counts.get("skip", 0),
                            "median_s": t["median_s"], "total_min": t["total_min"]}
    for name, table in (("position", position_bias(judged)), ("gold", gold_accuracy(judged, gold)),
                        ("repeats", self_consistency(votes, repeats))):
        for user, row in table.items():
            annotators.setdefault(user, {}).update(row)
    return {
        "reward_model_agreement": reward_model_agreement(dump),
        "judge_agreement": judge_agreement(judged, dump.get("roles", {})),
        "items": sum(1 for it in items.values() if it["status"] == "ready" and it["kind"] != "repeat"),
        "flagged": sum(1 for it in items.values() if it["status"] == "flagged"),
        "complete": complete,
        "votes": len(_labelled(votes)),
        "label_counts": dict(Counter(v["label"] for v in _labelled(judged))),
        "fleiss": fleiss(judged, overlap),
        "krippendorff_alpha": krippendorff_alpha(list(labels.values()) for labels in per_item.values()),
        "pairs": cohen_pairs(judged),
        "annotators": annotators,
    }
