"""The reservation queue and idempotent votes (mixed into `collect.store.Store`).

Each item needs N votes (`overlap`); asking for an item reserves one of its N places for `reservation_s`.
Counting an item's places and taking one happen in one write transaction that holds the write lock from its
first statement (SQLite `BEGIN IMMEDIATE` + an in-process lock; PostgreSQL `FOR UPDATE` row locks), so
concurrent annotators never get more than N reservations for one item. Items a judge skipped as unsure come
first; with `show_judge` an item carries the judge's choice as a suggestion (text, never a preselected answer),
and its reservation records which label was suggested.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from collect.auth import is_text
from collect.judge import suggestion
from collect.models import Assignment, Candidate, Item, Prompt, User, Vote

CHOICES = ("a", "b", "tie", "both_bad", "skip")
STRENGTHS = ("slight", "clear", "decisive")
MAX_ID = 2**31 - 1  # ids are INTEGER: 32-bit on PostgreSQL


@dataclass(frozen=True)
class Shown:
    """An item as one annotator sees it: prompt, left and right answers, the key that makes its submit idempotent,
    and (queue.show_judge) the judge's suggestion: {"judge", "choice": a|b, "text"}."""

    assignment_id: int
    item_id: int
    prompt: list
    left: str
    right: str
    idempotency_key: str
    expires_at: float
    suggestion: dict | None = None

    def as_dict(self) -> dict:
        return {"assignment_id": self.assignment_id, "item_id": self.item_id, "prompt": self.prompt,
                "left": self.left, "right": self.right, "idempotency_key": self.idempotency_key,
                "expires_at": self.expires_at, "suggestion": self.suggestion}


@dataclass(frozen=True)
class Receipt:
    vote_id: int
    replay: bool  # True when this key was already stored: a retried or double-clicked submit
    next: Shown | None = None


class Conflict(Exception):
    """A submit the queue refuses (expired and refilled reservation, someone else's item); HTTP 409."""


def used(now: float):
    """Assignments that hold one of an item's N places: voted, or reserved and not yet expired."""
    return select(func.count(Assignment.id)).where(
        or_(Assignment.state == "voted", (Assignment.state == "open") & (Assignment.expires_at > now)))


def stored_label(choice: str, left: str) -> str:
    """A shown choice in stored terms: 'a' is the left answer, which is `first` or `second` of the item."""
    if choice in ("tie", "both_bad"):
        return choice
    right = "second" if left == "first" else "first"
    return left if choice == "a" else right


class QueueMixin:
    """Reserve, show, vote, undo (needs Store's `write()`, `audit()`, `overlap`, `reservation_s`, `repeat_*`,
    `show_judge`, `sqlite`, `_rng`)."""

    def next_item(self, user: str) -> Shown | None:
        """The user's open reservation, or a new one on an item with room and never shown to them; None if done."""
        with self.write() as s:
            return self._next(s, self._user_id(s, user, lock=True), user)

    def _user_id(self, s: Session, name: str, lock: bool = False) -> int:
        q = select(User.id).where(User.name == name, User.active.is_(True))
        uid = s.scalar(q.with_for_update() if lock and not self.sqlite else q)
        if uid is None:
            raise Conflict(f"unknown user {name!r}")
        return uid

    def _next(self, s: Session, uid: int, user: str) -> Shown | None:
        now = time.time()
        mine = s.scalar(select(Assignment).where(Assignment.user_id == uid, Assignment.state == "open",
                                                 Assignment.expires_at > now).order_by(Assignment.id).limit(1))
        if mine is not None:
            return self._shown(s, mine)
        seen = select(Assignment.id).where(Assignment.item_id == Item.id, Assignment.user_id == uid).exists()
        orig = aliased(Vote)
        orig_vote = (select(func.min(orig.id)).where(orig.item_id == Item.repeat_of, orig.user_id == uid,
                                                     orig.active.is_(True), orig.label.is_not(None))
                     .correlate(Item).scalar_subquery())
        gap = (select(func.count(Vote.id)).where(Vote.user_id == uid, Vote.active.is_(True), Vote.label.is_not(None),
                                                 Vote.id > orig_vote).correlate(Item).scalar_subquery())
        repeat_ok = or_(Item.kind != "repeat", (orig_vote.is_not(None)) & (gap >= self.repeat_gap))
        # Items a judge was unsure on first (people decide what the machine could not), then the fullest
        # (finish items before starting new ones), then the oldest. `filled` counts votes only; open
        # reservations are counted for each candidate below, under the write lock.
        pick = (select(Item.id).where(Item.status == "ready", Item.filled < self.overlap, ~seen, repeat_ok)
                .order_by(Item.judge_unsure.desc(), Item.filled.desc(), Item.id).limit(32))
        # First look only at items nobody holds a live reservation on: there votes = places used, so the first
        # candidate has room (one query). Items others hold come after, through the full count.
        live = select(Assignment.id).where(Assignment.item_id == Item.id, Assignment.state == "open",
                                           Assignment.expires_at > now).exists()
        for item_id in s.scalars(pick.where(~live).limit(4)).all():
            room = self._room(s, item_id, now)
            if room:
                return self._reserve(s, uid, user, item_id, now)
        for _attempt in range(500):
            busy, offset = 0, 0
            while ids := s.scalars(pick.offset(offset)).all():  # pages: some candidates may be fully reserved
                for item_id in ids:
                    room = self._room(s, item_id, now)
                    if room:
                        return self._reserve(s, uid, user, item_id, now)
                    busy += room is None
                offset += len(ids)
            if not busy:
                return None
            time.sleep(0.01)  # PostgreSQL: the items with room were being filled by others; look again
        return None

    def _room(self, s: Session, item_id: int, now: float) -> bool | None:
        """Whether the item has a free place (votes + live reservations < N); None: PostgreSQL row locked by
        another annotator's transaction. On PostgreSQL the row lock is taken first, then counted."""
        if not self.sqlite:
            if s.scalar(select(Item.id).where(Item.id == item_id).with_for_update(skip_locked=True)) is None:
                return None
        return s.scalar(used(now).where(Assignment.item_id == item_id)) < self.overlap

    def _has_room_besides(self, s: Session, a: Assignment, now: float) -> bool:
        """Whether the item of `a` has a place without counting `a` itself (row lock first on PostgreSQL)."""
        if not self.sqlite:
            s.scalar(select(Item.id).where(Item.id == a.item_id).with_for_update())
        return s.scalar(used(now).where(Assignment.item_id == a.item_id, Assignment.id != a.id)) < self.overlap

    def _reserve(self, s: Session, uid: int, user: str, item_id: int, now: float) -> Shown:
        a = Assignment(item_id=item_id, user_id=uid, left=self._rng.choice(("first", "second")), state="open",
                       created_at=now, expires_at=now + self.reservation_s)
        s.add(a)  # the assignments table is itself the record of who was shown what, when, in which order
        s.flush()
        return self._shown(s, a)

    def _shown(self, s: Session, a: Assignment) -> Shown:
        first, second = aliased(Candidate), aliased(Candidate)
        row = s.execute(select(Prompt.messages, first.text, second.text)
                        .join(Item, Item.prompt_id == Prompt.id).join(first, first.id == Item.first_id)
                        .join(second, second.id == Item.second_id).where(Item.id == a.item_id)).one()
        left, right = (row[1], row[2]) if a.left == "first" else (row[2], row[1])
        return Shown(a.id, a.item_id, row[0], left, right, f"{a.id}-{uuid.uuid4().hex}", a.expires_at,
                     self._suggest(s, a) if self.show_judge else None)

    def _suggest(self, s: Session, a: Assignment) -> dict | None:
        """The earliest judge's A/B vote on the item, as this annotator sees it; recorded on the reservation."""
        theirs = aliased(Assignment)
        row = s.execute(select(User.name, Vote.label, Vote.rationale, theirs.left)
                        .join(User, User.id == Vote.user_id).join(theirs, theirs.id == Vote.assignment_id)
                        .where(Vote.item_id == a.item_id, Vote.active.is_(True), User.role == "judge",
                               Vote.label.in_(("first", "second"))).order_by(Vote.id).limit(1)).first()
        if row is None or s.scalar(select(User.role).where(User.id == a.user_id)) == "judge":
            return None
        a.suggested = row.label  # once shown, it stays recorded: the vote may have been anchored by it
        return suggestion(row.name, row.rationale, row.label, judge_left=row.left, shown_left=a.left)

    def submit(self, user: str, assignment_id: int, choice: str, idempotency_key: str, strength: str | None = None,
               rationale: str = "", ideal: str = "", then_next: bool = True) -> Receipt:
        """Record one vote in one transaction (and reserve the next item in it); a known key returns the first vote."""
        if choice not in CHOICES:
            raise Conflict(f"choice must be one of {', '.join(CHOICES)}")
        if strength not in (None, "", *STRENGTHS):
            raise Conflict(f"strength must be one of {', '.join(STRENGTHS)}")
        if not is_text(idempotency_key) or not 1 <= len(idempotency_key) <= 128:
            raise Conflict("idempotency_key: 1–128 characters")
        if type(assignment_id) is not int or not 0 < assignment_id <= MAX_ID:
            raise Conflict("no such reservation for this user")
        for what, value, limit in (("rationale", rationale, 20_000), ("ideal", ideal, 50_000)):
            if value and (not is_text(value) or len(value) > limit):
                raise Conflict(f"{what}: text of at most {limit} characters")
        try:
            with self.write() as s:
                return self._submit(s, user, assignment_id, choice, idempotency_key, strength or None,
                                    rationale or "", ideal or "", then_next)
        except IntegrityError:  # PostgreSQL: the same key committed by a concurrent retry between check and insert
            with self.write() as s:
                return self._replay(s, user, assignment_id, idempotency_key, then_next)

    def _replay(self, s: Session, user: str, assignment_id: int, key: str, then_next: bool) -> Receipt:
        vote = s.scalar(select(Vote).where(Vote.idempotency_key == key))
        uid = self._user_id(s, user, lock=True)
        if vote.user_id != uid:
            raise Conflict("idempotency key belongs to another user")
        if vote.assignment_id != assignment_id:  # a replay only of the same submit, never of another item's
            raise Conflict("idempotency key was used for another reservation; nothing stored")
        return Receipt(vote.id, True, self._next(s, uid, user) if then_next else None)

    def _submit(self, s, user, assignment_id, choice, key, strength, rationale, ideal, then_next) -> Receipt:
        uid = self._user_id(s, user, lock=True)
        if s.scalar(select(Vote.id).where(Vote.idempotency_key == key)) is not None:
            return self._replay(s, user, assignment_id, key, then_next)
        q = select(Assignment).where(Assignment.id == assignment_id)
        a = s.scalar(q if self.sqlite else q.with_for_update())
        if a is None or a.user_id != uid:
            raise Conflict("no such reservation for this user")
        if a.state != "open":
            raise Conflict(f"this item was already {a.state}")
        now = time.time()
        if a.expires_at <= now and choice != "skip" and not self._has_room_besides(s, a, now):
            raise Conflict("reservation expired and the item was filled by others")
        label = None if choice == "skip" else stored_label(choice, a.left)
        vote = Vote(idempotency_key=key, assignment_id=a.id, item_id=a.item_id, user_id=uid, choice=choice,
                    label=label, strength=strength if label in ("first", "second") else None, rationale=rationale,
                    ideal=ideal, seconds=round(now - a.created_at, 3), created_at=now, active=True)
        s.add(vote)
        a.state = "skipped" if choice == "skip" else "voted"
        if label is not None:  # in SQL, not Python: concurrent PostgreSQL votes on one item must not lose one
            s.execute(update(Item).where(Item.id == a.item_id).values(filled=Item.filled + 1))
        elif s.scalar(select(User.role).where(User.id == uid)) == "judge":  # unsure: people see it first
            s.execute(update(Item).where(Item.id == a.item_id).values(judge_unsure=True))
        s.flush()
        self.audit(s, user, "vote", vote=vote.id, item=a.item_id, choice=choice, label=label)
        return Receipt(vote.id, False, self._next(s, uid, user) if then_next else None)

    def undo(self, user: str) -> Shown | None:
        """Take back the user's last vote if it is their latest action; the item is theirs again to relabel."""
        with self.write() as s:
            uid = self._user_id(s, user, lock=True)
            last = s.scalar(select(Vote).where(Vote.user_id == uid).order_by(Vote.id.desc()).limit(1))
            if last is None or not last.active:
                return None
            a = s.get(Assignment, last.assignment_id)
            now = time.time()
            # a skip held none of the item's N places: reopening it needs a free one
            if last.label is None and not self._has_room_besides(s, a, now):
                raise Conflict("the skipped item was filled by others meanwhile; nothing to undo")
            last.active = False
            if last.label is not None:
                s.execute(update(Item).where(Item.id == last.item_id).values(filled=Item.filled - 1))
            # The reservation handed out after the vote stays theirs; the undone item has the lower id, so it comes first
            a.state, a.created_at, a.expires_at = "open", now, now + self.reservation_s
            self.audit(s, user, "undo", vote=last.id, item=last.item_id)
            return self._shown(s, a)

    def progress(self, user: str) -> dict:
        with self.read() as s:
            uid = s.scalar(select(User.id).where(User.name == user))
            counts = dict(s.execute(select(Vote.choice, func.count()).where(Vote.user_id == uid, Vote.active.is_(True))
                                    .group_by(Vote.choice)).all())
            total = s.scalar(select(func.count()).select_from(Item).where(Item.status == "ready",
                                                                          Item.kind != "repeat")) or 0
        done = sum(v for k, v in counts.items() if k != "skip")
        return {"user": user, "votes": done, "skipped": counts.get("skip", 0), "items": total}
