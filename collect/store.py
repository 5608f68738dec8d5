"""The labeling store: SQLAlchemy tables, users and sessions, the reservation queue and idempotent votes.

SQLite (WAL, synchronous=FULL) by default, PostgreSQL by URL. Every write is one transaction that takes the
write lock up front (SQLite `BEGIN IMMEDIATE`; PostgreSQL row locks `FOR UPDATE`), so counting an item's
reservations and adding one cannot interleave with another annotator doing the same.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from sqlalchemy import create_engine, event, func, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, aliased

from alignkit.errors import UserError
from collect.auth import ROLES, UsersMixin, hash_password, is_text, sha
from collect.models import Assignment, Audit, Base, Candidate, Item, LoginSession, Meta, Prompt, User, Vote

__all__ = ["Assignment", "Audit", "Candidate", "Conflict", "Item", "LoginSession", "Meta", "Prompt", "Receipt",
           "ROLES", "Shown", "Store", "User", "Vote", "hash_password", "open_store", "prompt_key"]

CHOICES = ("a", "b", "tie", "both_bad", "skip")
STRENGTHS = ("slight", "clear", "decisive")


@dataclass(frozen=True)
class Shown:
    """An item as one annotator sees it: prompt, left and right answers, the key that makes its submit idempotent."""

    assignment_id: int
    item_id: int
    prompt: list
    left: str
    right: str
    idempotency_key: str
    expires_at: float

    def as_dict(self) -> dict:
        return {"assignment_id": self.assignment_id, "item_id": self.item_id, "prompt": self.prompt,
                "left": self.left, "right": self.right, "idempotency_key": self.idempotency_key,
                "expires_at": self.expires_at}


@dataclass(frozen=True)
class Receipt:
    vote_id: int
    replay: bool  # True when this key was already stored: a retried or double-clicked submit
    next: Shown | None = None


class Conflict(Exception):
    """A submit the queue refuses (expired and refilled reservation, someone else's item); HTTP 409."""


def prompt_key(messages: list) -> str:
    return sha(json.dumps(messages, sort_keys=True, ensure_ascii=False))


class Store(UsersMixin):
    """All reads and writes of the labeling data; safe to share between threads of one server."""

    def __init__(self, url: str, overlap: int = 3, reservation_minutes: float = 15.0,
                 repeat_every: int = 0, repeat_gap: int = 5, create: bool = False, background_checkpoint: bool = False):
        self.url = url
        self.overlap, self.reservation_s = overlap, reservation_minutes * 60
        self.repeat_every, self.repeat_gap = repeat_every, repeat_gap
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            _check_sqlite_file(url, create)
        self._lock = threading.Lock()  # SQLite: one writer at a time in-process, no busy-wait backoff
        self._rng = random.SystemRandom()
        self._checkpointer: threading.Thread | None = None
        self._stop = threading.Event()
        background_checkpoint = background_checkpoint and self.sqlite and _sqlite_path(url) is not None
        self.engine = _engine(url, autocheckpoint=not background_checkpoint)
        self._writer = self.engine.execution_options(alignkit_write=True)
        if create:
            try:
                Base.metadata.create_all(self.engine)
            except DBAPIError as e:
                self.engine.dispose()
                raise UserError(f"{_safe_url(url)}: cannot create the store: {_first_line(e)}") from None
        else:
            self._check_schema()
        if background_checkpoint:
            self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="wal-checkpoint", daemon=True)
            self._checkpointer.start()

    def _checkpoint_loop(self, interval_s: float = 0.5) -> None:
        """SQLite server: copy the WAL into the database file off the request path.

        By default SQLite checkpoints inside the commit that crosses 1000 WAL pages: that vote also copies the
        pages and fsyncs the database file while every other writer waits for the lock. The server instead turns
        automatic checkpoints off and runs a PASSIVE checkpoint (it never waits for, nor blocks, writers) from
        this thread. Durability is unchanged: a vote is acknowledged once its WAL frames are on disk.
        """
        import sqlite3

        conn = self.engine.raw_connection()  # one pooled connection, with the engine's pragmas, for the thread's life
        try:
            while not self._stop.wait(interval_s):
                cur = conn.cursor()
                try:
                    cur.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.OperationalError:  # busy/locked: the next round catches up
                    pass
                finally:
                    cur.close()
        finally:
            conn.close()

    def close(self) -> None:
        """Stop the checkpoint thread (if any) and close pooled connections (SQLite then folds the WAL in)."""
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=5)
        self.engine.dispose()

    def _check_schema(self) -> None:
        try:
            with self.read() as s:
                s.execute(select(User.id).limit(1))
        except DBAPIError as e:  # no such table, not a database, connection refused, bad connection option …
            self.engine.dispose()
            raise UserError(f"{_safe_url(self.url)}: not an alignkit collect store (run `alignkit collect init` "
                            f"first): {_first_line(e)}") from None

    # ---- transactions -------------------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed on exit (durable before this returns), rolled back on error."""
        lock = self._lock if self.sqlite else _NoLock
        with lock, Session(self._writer, expire_on_commit=False) as s:
            with s.begin():
                yield s

    def audit(self, s: Session, user: str, action: str, **detail: Any) -> None:
        s.add(Audit(at=time.time(), user=user, action=action, detail=detail))

    def set_meta(self, **values: Any) -> None:
        with self.write() as s:
            for k, v in values.items():
                row = s.get(Meta, k)
                if row is None:
                    s.add(Meta(key=k, value=json.dumps(v)))
                else:
                    row.value = json.dumps(v)

    def meta(self, key: str, default: Any = None) -> Any:
        with self.read() as s:
            row = s.get(Meta, key)
            return json.loads(row.value) if row else default

    # ---- prompts, candidates, items -------------------------------------------------------------------

    def add_prompts(self, records: list[dict]) -> int:
        """Insert prompts ({'prompt': [messages], 'category': …}); ones already stored are skipped."""
        return self.load(records)["prompts"]

    def load(self, prompts: list[dict] = (), gold: list[dict] = (), settings: dict | None = None) -> dict:
        """`collect init` in one transaction: queue settings, new prompts, new gold items; all or nothing.

        Gold records are {'prompt': [messages], 'category', 'chosen': str, 'rejected': str}; one with the same
        prompt, chosen and rejected text as a stored gold item is skipped, so re-running a file adds nothing.
        """
        with self.write() as s:
            for k, v in (settings or {}).items():
                row = s.get(Meta, k)
                if row is None:
                    s.add(Meta(key=k, value=json.dumps(v)))
                else:
                    row.value = json.dumps(v)
            ids = {key: pid for pid, key in s.execute(select(Prompt.id, Prompt.key))}
            added = {"prompts": 0, "gold": 0}
            for n, rec in enumerate([*prompts, *gold]):
                key = prompt_key(rec["prompt"])
                if key not in ids:
                    p = Prompt(key=key, messages=rec["prompt"], category=rec.get("category"))
                    s.add(p)
                    s.flush()
                    ids[key] = p.id
                    added["prompts"] += n < len(prompts)  # a gold item's own prompt is not counted as one
            if gold:
                first, second = aliased(Candidate), aliased(Candidate)
                known = set(s.execute(select(Item.prompt_id, first.text, second.text)
                                      .join(first, first.id == Item.first_id).join(second, second.id == Item.second_id)
                                      .where(Item.kind == "gold")).all())
                now = time.time()
                for rec in gold:
                    pid = ids[prompt_key(rec["prompt"])]
                    if (pid, rec["chosen"], rec["rejected"]) in known:
                        continue
                    known.add((pid, rec["chosen"], rec["rejected"]))
                    c1, c2 = (Candidate(prompt_id=pid, text=text, generator="gold", sampling={}, created_at=now)
                              for text in (rec["chosen"], rec["rejected"]))
                    s.add_all([c1, c2])
                    s.flush()
                    s.add(Item(prompt_id=pid, first_id=c1.id, second_id=c2.id, kind="gold", gold="first",
                               status="ready", similarity=0.0, created_at=now))
                    added["gold"] += 1
            self.audit(s, "cli", "prompts_add", added=added["prompts"], gold=added["gold"])
        return added

    def prompts(self) -> list[tuple[int, list]]:
        with self.read() as s:
            return [(p.id, p.messages) for p in s.scalars(select(Prompt).order_by(Prompt.id))]

    def add_item(self, prompt_id: int, first: tuple[str, str, dict], second: tuple[str, str, dict],
                 similarity: float = 0.0, flagged: bool = False, kind: str = "pair", gold: str | None = None) -> int:
        """Store two candidates (text, generator, sampling) and the item pairing them; maybe a blind repeat."""
        now = time.time()
        with self.write() as s:
            c1, c2 = (Candidate(prompt_id=prompt_id, text=t, generator=g, sampling=smp, created_at=now)
                      for t, g, smp in (first, second))
            s.add_all([c1, c2])
            s.flush()
            item = Item(prompt_id=prompt_id, first_id=c1.id, second_id=c2.id, kind=kind, gold=gold,
                        status="flagged" if flagged else "ready", similarity=similarity, created_at=now)
            s.add(item)
            s.flush()
            if not flagged and kind == "pair" and self.repeat_every and item.id % self.repeat_every == 0:
                s.add(Item(prompt_id=prompt_id, first_id=c1.id, second_id=c2.id, kind="repeat", repeat_of=item.id,
                           status="ready", similarity=similarity, created_at=now))
            if flagged:
                self.audit(s, "worker", "pair_flagged", item=item.id, similarity=round(similarity, 4))
            return item.id

    def ready_counts(self) -> dict[int, int]:
        """prompt id → number of shown-able generated items."""
        with self.read() as s:
            rows = s.execute(select(Item.prompt_id, func.count()).where(Item.status == "ready", Item.kind == "pair")
                             .group_by(Item.prompt_id))
            return {p: n for p, n in rows}

    def item_count(self) -> int:
        with self.read() as s:
            return s.scalar(select(func.count()).select_from(Item)) or 0

    def open_items(self) -> int:
        """Items that still need votes: what the worker keeps ahead of the annotators."""
        now = time.time()
        with self.read() as s:
            used = _used(now).where(Assignment.item_id == Item.id).scalar_subquery()
            return s.scalar(select(func.count()).select_from(Item)
                            .where(Item.status == "ready", Item.kind != "repeat", used < self.overlap)) or 0

    # ---- the queue --------------------------------------------------------------------------------------

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
        # Fullest items first (finish items before starting new ones), then oldest. `filled` counts votes
        # only; open reservations are counted for each candidate below, under the write lock.
        pick = (select(Item.id).where(Item.status == "ready", Item.filled < self.overlap, ~seen, repeat_ok)
                .order_by(Item.filled.desc(), Item.id).limit(32))
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
        return s.scalar(_used(now).where(Assignment.item_id == item_id)) < self.overlap

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
        return Shown(a.id, a.item_id, row[0], left, right, f"{a.id}-{uuid.uuid4().hex}", a.expires_at)

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
        if a.expires_at <= now and choice != "skip":
            if not self.sqlite:
                s.scalar(select(Item.id).where(Item.id == a.item_id).with_for_update())
            others = s.scalar(_used(now).where(Assignment.item_id == a.item_id, Assignment.id != a.id))
            if others >= self.overlap:
                raise Conflict("reservation expired and the item was filled by others")
        label = None if choice == "skip" else _label(choice, a.left)
        vote = Vote(idempotency_key=key, assignment_id=a.id, item_id=a.item_id, user_id=uid, choice=choice,
                    label=label, strength=strength if label in ("first", "second") else None, rationale=rationale,
                    ideal=ideal, seconds=round(now - a.created_at, 3), created_at=now, active=True)
        s.add(vote)
        a.state = "skipped" if choice == "skip" else "voted"
        if label is not None:  # in SQL, not Python: concurrent PostgreSQL votes on one item must not lose one
            s.execute(update(Item).where(Item.id == a.item_id).values(filled=Item.filled + 1))
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
            if last.label is None:  # a skip held none of the item's N places: reopening it needs a free one
                if not self.sqlite:
                    s.scalar(select(Item.id).where(Item.id == a.item_id).with_for_update())
                others = s.scalar(_used(now).where(Assignment.item_id == a.item_id, Assignment.id != a.id))
                if others >= self.overlap:
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

    # ---- reading everything (stats, export) -------------------------------------------------------------

    def item_category(self, item_id: int) -> str | None:
        """The category of an item's prompt (the rules judge reads it)."""
        with self.read() as s:
            return s.scalar(select(Prompt.category).join(Item, Item.prompt_id == Prompt.id).where(Item.id == item_id))

    def dump(self) -> dict:
        """Every item, candidate, prompt, user and active vote, for statistics and export."""
        with self.read() as s:
            users = {u.id: u.name for u in s.scalars(select(User))}
            roles = {u.name: u.role for u in s.scalars(select(User))}
            prompts = {p.id: {"messages": p.messages, "category": p.category} for p in s.scalars(select(Prompt))}
            cands = {c.id: {"text": c.text, "generator": c.generator, "sampling": c.sampling}
                     for c in s.scalars(select(Candidate))}
            items = {i.id: {"prompt_id": i.prompt_id, "first": i.first_id, "second": i.second_id, "kind": i.kind,
                            "repeat_of": i.repeat_of, "gold": i.gold, "status": i.status}
                     for i in s.scalars(select(Item))}
            lefts = {a.id: a.left for a in s.scalars(select(Assignment))}
            votes = [{"id": v.id, "item": v.item_id, "user": users[v.user_id], "choice": v.choice, "label": v.label,
                      "strength": v.strength, "rationale": v.rationale, "ideal": v.ideal, "seconds": v.seconds,
                      "left": lefts[v.assignment_id], "at": v.created_at}
                     for v in s.scalars(select(Vote).where(Vote.active.is_(True)).order_by(Vote.id))]
        return {"users": users, "roles": roles, "prompts": prompts, "candidates": cands, "items": items,
                "votes": votes}

    def audit_log(self, limit: int = 100) -> list[dict]:
        with self.read() as s:
            rows = s.scalars(select(Audit).order_by(Audit.id.desc()).limit(limit))
            return [{"at": r.at, "user": r.user, "action": r.action, "detail": r.detail} for r in rows]


MAX_ID = 2**31 - 1  # ids are INTEGER: 32-bit on PostgreSQL


def _first_line(e: DBAPIError) -> str:
    return (str(e.orig).strip().splitlines() or [type(e.orig).__name__])[0]


def _safe_url(url: str) -> str:
    """The URL without a password (postgresql://user:secret@host → postgresql://user:***@host)."""
    head, sep, tail = url.partition("://")
    if "@" in tail and ":" in tail.split("@", 1)[0]:
        user = tail.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{tail.split('@', 1)[1]}"
    return url


def _check_sqlite_file(url: str, create: bool) -> None:
    """SQLite: a real file path; for anything but init, one that exists (else sqlite creates an empty file)."""
    import os
    from pathlib import Path

    if not url.startswith("sqlite:///"):
        raise UserError(f"store '{url}': expected sqlite:///path/to/file.db (an in-memory store would lose everything)")
    path = _sqlite_path(url)
    if path is None:
        raise UserError(f"store '{url}': an in-memory SQLite store would lose every vote; give a file path")
    _sqlite_sync(url)
    p = Path(path)
    if not create:
        if not p.is_file():
            raise UserError(f"{url}: no store at {path} (run `alignkit collect init` first)")
        return
    if p.exists() and not p.is_file():
        raise UserError(f"store '{url}': {path} exists and is not a file")
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"store '{url}': {parent} is not a directory")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"store '{url}': cannot create {p.parent}: {e.strerror}") from None
    if not os.access(p.parent, os.W_OK) or str(p.resolve()).startswith(("/proc/", "/sys/", "/dev/")):
        raise UserError(f"store '{url}': cannot write a database in {p.parent}")


class _NoLockType:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NoLock = _NoLockType()


def _used(now: float):
    """Assignments that hold one of an item's N places: voted, or reserved and not yet expired."""
    return select(func.count(Assignment.id)).where(
        or_(Assignment.state == "voted", (Assignment.state == "open") & (Assignment.expires_at > now)))


def _label(choice: str, left: str) -> str:
    """A shown choice in stored terms: 'a' is the left answer, which is `first` or `second` of the item."""
    if choice in ("tie", "both_bad"):
        return choice
    right = "second" if left == "first" else "first"
    return left if choice == "a" else right


def _sqlite_sync(url: str) -> str:
    query = url.partition("?")[2]
    params = dict(p.split("=", 1) if "=" in p else (p, "") for p in query.split("&") if p) if query else {}
    sync = params.pop("synchronous", "full").upper()
    if sync not in ("FULL", "NORMAL"):
        raise UserError(f"store '{url}': synchronous must be full or normal")
    if params:
        raise UserError(f"store '{url}': unknown option(s) {', '.join(params)}; only ?synchronous=full|normal")
    return sync


def _sqlite_path(url: str) -> str | None:
    """The database file of a sqlite:/// URL; None for an in-memory database."""
    path = url.partition("?")[0][len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    return None if path in ("", ":memory:") else path


def _engine(url: str, autocheckpoint: bool = True):
    if url.startswith("sqlite"):
        base = url.partition("?")[0]
        sync = _sqlite_sync(url)
        engine = create_engine(base, connect_args={"timeout": 30, "check_same_thread": False},
                               pool_size=16, max_overflow=48)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's own is deferred and late)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL (default): the WAL is fsynced at every commit: an acknowledged vote survives kill -9 and power
            # loss. NORMAL (?synchronous=normal): the commit is in the OS page cache before the ack, which survives
            # kill -9 of the server but not a power cut; it saves one fsync (~9 ms here) per vote.
            cur.execute(f"PRAGMA synchronous={sync}")
            if not autocheckpoint:  # the server's checkpoint thread does it (Store._checkpoint_loop)
                cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):
            # Writers take the database lock at BEGIN: count-then-insert never races another writer
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("alignkit_write") else "BEGIN")

        return engine
    if url.startswith("postgres"):
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            raise UserError("PostgreSQL store needs psycopg2: pip install alignkit[postgres]") from None
        for plain in ("postgres://", "postgresql://"):  # SQLAlchemy 2.1 would pick psycopg 3 for a plain URL
            if url.startswith(plain):
                url = "postgresql+psycopg2://" + url[len(plain):]
        return create_engine(url, pool_size=16, max_overflow=48, pool_pre_ping=True)
    raise UserError(f"store '{url}': expected sqlite:///path or postgresql://user@host/db")


QUEUE_KEYS = ("overlap", "reservation_minutes", "repeat_every", "repeat_gap")


def queue_settings(recipe) -> dict:
    q = recipe.queue
    return {"overlap": q.overlap, "reservation_minutes": q.reservation_minutes, "repeat_every": q.repeat_every,
            "repeat_gap": q.repeat_gap}


def open_store(url: str, recipe=None, create: bool = False, remember: bool = False,
               background_checkpoint: bool = False) -> Store:
    """A Store with the queue settings of a CollectRecipe, else the ones the store remembers, else defaults.

    `remember` writes the recipe's queue settings into the store (init and serve with --config do), so that
    later commands without a recipe count against the same N. Without a recipe nothing is written: a stored N
    is never reset to the default by a command that was not given one.
    """
    store = Store(url, create=create, background_checkpoint=background_checkpoint)
    if recipe is not None:
        settings = queue_settings(recipe)
        if remember:
            store.set_meta(**settings)
    else:
        from collect.config import QueueConfig

        defaults = QueueConfig()
        settings = {k: store.meta(k, getattr(defaults, k)) for k in QUEUE_KEYS}
    apply_settings(store, settings)
    return store


def apply_settings(store: Store, settings: dict) -> None:
    store.overlap, store.reservation_s = int(settings["overlap"]), float(settings["reservation_minutes"]) * 60
    store.repeat_every, store.repeat_gap = int(settings["repeat_every"]), int(settings["repeat_gap"])
