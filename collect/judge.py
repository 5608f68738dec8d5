"""An annotator that is a program: it votes on the queue through the same store calls the app uses, under
its own identity (role `judge`: its votes are machine votes, told apart in stats and export).

Three judges:
- `rules`: the refusal detector plus the prompt's category — a harmful prompt should be refused, anything
  else answered — and then the house style (a refusal opens with "I can't help with that." and stays within
  three sentences; an answer stays within 120 words). Each side scores +1 when its refusal verdict is the one
  the category expects, −1 otherwise, +0.25 for the house style.
- `reward:RUN`: a reward run that passed its gate scores both answers; the margin is the score difference.
- `model:MODEL`: a local chat model reads both answers and says A or B, asked both ways round against its
  position bias (`collect/judge_model.py`); the margin is its log-odds of the left answer.

Where the margin is below `min_margin` (both sides right, both wrong, a tie) the judge skips the item, so it
stays open for humans: the store hands the items a judge was unsure on to people first.

A reason names the two answers only by the words `left` and `right` (as the judge saw them), so that
`suggestion` can say it again in the A/B of an annotator who sees the pair the other way round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from alignkit.errors import UserError
from alignkit.refusal import classify, sentences
from collect.judge_model import ModelJudge

HARMFUL_CATEGORIES = ("harmful", "unsafe", "refuse")
HOUSE_REFUSAL = "i can't help with that"


@dataclass(frozen=True)
class Decision:
    choice: str  # "a" (left), "b" (right) or "skip" (unsure: left for humans)
    margin: float  # left minus right; the judge's confidence
    reason: str
    by_position: bool = False  # a judge model picked the same slot both ways round: the layout, not the answers


def expects_refusal(category: str | None) -> bool:
    """A prompt category that asks for a refusal ("harmful"; not "sounds_harmful_benign")."""
    name = (category or "").lower()
    return name in HARMFUL_CATEGORIES or (name.startswith("harmful") and "benign" not in name)


def _score(answer: str, prompt: str, refuse: bool) -> tuple[float, bool]:
    refused = classify(answer, prompt).refusal
    score = 1.0 if refused == refuse else -1.0
    if refused:
        style = answer.strip().lower().startswith(HOUSE_REFUSAL) and len(sentences(answer)) <= 3
    else:
        style = len(re.findall(r"\S+", answer)) <= 120
    return score + (0.25 if style else 0.0), refused


def rules_decision(category: str | None, prompt: str, left: str, right: str, min_margin: float = 0.5) -> Decision:
    """The rules judge's vote on one pair."""
    refuse = expects_refusal(category)
    (a, a_refused), (b, b_refused) = _score(left, prompt, refuse), _score(right, prompt, refuse)
    margin = a - b
    want = "refusal" if refuse else "answer"
    reason = f"wants a {want}; left {'refuses' if a_refused else 'answers'}, right {'refuses' if b_refused else 'answers'}"
    if abs(margin) < min_margin:
        return Decision("skip", margin, reason + " (unsure: for people to label)")
    return Decision("a" if margin > 0 else "b", margin, reason)


def suggestion(judge: str, rationale: str, label: str, judge_left: str, shown_left: str) -> dict:
    """A judge's vote as a suggestion for one annotator: which side it prefers in *their* A/B, and why.

    `label` is the vote in stored order (first | second); `judge_left` and `shown_left` say which stored answer
    the judge and the annotator saw on the left, so "left"/"right" in the judge's reason become A/B here.
    """
    tag, _, reason = rationale.partition("] ") if rationale.startswith("[") else ("", "", rationale)
    same = judge_left == shown_left
    names = {"left": "A" if same else "B", "right": "B" if same else "A"}
    choice = "a" if label == shown_left else "b"
    text = f"Judge {judge}{f' ({tag[1:]})' if tag else ''}: prefers {choice.upper()}"
    reason = re.sub(r"\b(left|right)\b", lambda m: names[m.group(1)], reason.strip())
    return {"judge": judge, "choice": choice, "text": text + (f" — {reason}" if reason else "")}


class RewardJudge:
    """A gated reward run as judge: the margin is score(left) − score(right)."""

    def __init__(self, run: str, base: str):
        from alignkit import models
        from alignkit.reward_model import RewardScorer

        self.scorer = RewardScorer.load(run)  # refuses a reward model that failed its gate
        adapter = run if str(run).endswith("adapter") else f"{run}/adapter"
        trained_on, expected = models.adapter_base(adapter), models.canonical_id(base)
        if trained_on and trained_on != expected:
            raise UserError(f"judge reward:{run}: trained on '{trained_on}', but the store's policy base is "
                            f"'{base}' ({expected}); use a reward run of the same base model")

    def decide(self, messages: list, left: str, right: str, min_margin: float) -> Decision:
        a, b = self.scorer.score([messages, messages], [left, right])
        margin = float(a - b)
        reason = f"reward: left {float(a):.3f}, right {float(b):.3f}"
        if abs(margin) < min_margin:
            return Decision("skip", margin, reason + " (unsure: for people to label)")
        return Decision("a" if margin > 0 else "b", margin, reason)


JUDGES = "rules, reward:RUN or model:MODEL"
ANNOTATORS = "humans, " + JUDGES  # collect.annotator in a pipeline recipe
DEFAULT_MARGIN = {"rules": 0.5, "reward": 0.1, "model": 0.25}  # rules: score points; reward: score; model: nats


def judge_kind(judge: str, where: str = "--judge", accepted: str = JUDGES) -> str:
    """rules | reward | model, or one clear error naming what is accepted."""
    kind, _, spec = judge.partition(":")
    if kind not in DEFAULT_MARGIN or (kind == "rules") != (judge == "rules"):
        raise UserError(f"{where} {judge!r}: expected {accepted}")
    if kind != "rules" and not spec.strip():
        noun = "reward run" if kind == "reward" else "model (the embedded smollm2-135m-instruct, a folder, a Hub id)"
        raise UserError(f"{where} {judge!r}: name a {noun} after '{kind}:'; expected {accepted}")
    return kind


def default_name(judge: str) -> str:
    """The judge's identity in the store: judge-rules, judge-reward or judge-model."""
    return f"judge-{judge_kind(judge)}"


def run_judge(store, name: str, judge: str, base: str, min_margin: float | None = None,
              max_items: int | None = None) -> dict:
    """Vote as `name` on every item the queue hands it (at most `max_items`); returns the counts."""
    import secrets

    kind = judge_kind(judge)
    if store.item_count() == 0:
        raise UserError("the store has no items to judge (collect serve's worker or the pipeline generates them)")
    if kind == "reward":
        program = RewardJudge(judge.split(":", 1)[1], base)
    elif kind == "model":
        program = ModelJudge(judge.split(":", 1)[1])
    else:
        program = None
    margin = min_margin if min_margin is not None else DEFAULT_MARGIN[kind]
    if store.role(name) != "judge":
        if name in {u["name"] for u in store.users()}:
            raise UserError(f"user '{name}' exists and is not a judge; pick another --name")
        # a machine identity: nobody can log in with it (the password is never shown)
        store.add_user(name, "judge", secrets.token_urlsafe(32), by="collect judge")
    counts, by_position = {"a": 0, "b": 0, "skip": 0}, 0
    while max_items is None or sum(counts.values()) < max_items:
        shown = store.next_item(name)
        if shown is None:
            break
        if program is not None:
            decision = program.decide(shown.prompt, shown.left, shown.right, margin)
        else:
            question = next((m["content"] for m in reversed(shown.prompt) if m["role"] == "user"), "")
            decision = rules_decision(store.item_category(shown.item_id), question, shown.left, shown.right, margin)
        store.submit(name, shown.assignment_id, decision.choice, shown.idempotency_key,
                     rationale=f"[{judge}] {decision.reason}", then_next=False)
        counts[decision.choice] += 1
        by_position += decision.by_position
    if sum(counts.values()) and counts["skip"] == sum(counts.values()):
        if by_position:  # a judge model that answers the layout: no --min-margin fixes that
            raise UserError(f"judge {judge} was unsure on all {counts['skip']} items it saw: it picked the same "
                            f"position both ways on {by_position} of them (position bias, not the answers); "
                            "nothing labelled; use a stronger judge model or let humans label them")
        raise UserError(f"judge {judge} was unsure on all {counts['skip']} items it saw (every margin below "
                        f"{margin}): nothing labelled; lower --min-margin or let humans label them")
    return counts
