"""The labeling store: one `Store` that every command, the app and the JSON API go through.

SQLite (WAL, synchronous=FULL) by default, PostgreSQL by URL. Every write is one transaction that takes the
write lock up front (SQLite `BEGIN IMMEDIATE`; PostgreSQL row locks `FOR UPDATE`), so counting an item's
reservations and adding one cannot interleave with another annotator doing the same.

By responsibility: `collect.engine` (the connection, WAL, schema upgrade), `collect.auth` (users, sessions),
`collect.content` (prompts, items, settings), `collect.queue` (reservations, votes, undo),
`collect.reports` (dump, audit log); `collect.models` holds the tables. Their public names are re-exported
here, so `from collect.store import …` keeps working.
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from alignkit.errors import UserError
from collect.auth import ROLES, UsersMixin, hash_password
from collect.content import ContentMixin, prompt_key
from collect.engine import (check_sqlite_file, checkpoint_loop, first_line, make_engine, safe_url, sqlite_path,
                            upgrade_schema)
from collect.models import Assignment, Audit, Base, Candidate, Item, LoginSession, Meta, Prompt, User, Vote
from collect.queue import CHOICES, MAX_ID, STRENGTHS, Conflict, QueueMixin, Receipt, Shown
from collect.reports import ReportsMixin

__all__ = ["Assignment", "Audit", "CHOICES", "Candidate", "Conflict", "Item", "LoginSession", "MAX_ID", "Meta",
           "Prompt", "QUEUE_KEYS", "ROLES", "Receipt", "STRENGTHS", "Shown", "Store", "User", "Vote",
           "apply_settings", "hash_password", "open_store", "prompt_key", "queue_settings"]

QUEUE_KEYS = ("overlap", "reservation_minutes", "repeat_every", "repeat_gap", "show_judge")


class Store(UsersMixin, ContentMixin, QueueMixin, ReportsMixin):
    """All reads and writes of the labeling data; safe to share between threads of one server."""

    def __init__(self, url: str, overlap: int = 3, reservation_minutes: float = 15.0,
                 repeat_every: int = 0, repeat_gap: int = 5, create: bool = False, background_checkpoint: bool = False,
                 show_judge: bool = False):
        self.url = url
        self.overlap, self.reservation_s = overlap, reservation_minutes * 60
        self.repeat_every, self.repeat_gap = repeat_every, repeat_gap
        self.show_judge = show_judge  # queue.show_judge: a judge's vote is shown to people as a suggestion
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            check_sqlite_file(url, create)
        self._lock = threading.Lock()  # SQLite: one writer at a time in-process, no busy-wait backoff
        self._rng = random.SystemRandom()
        self._checkpointer: threading.Thread | None = None
        self._stop = threading.Event()
        background_checkpoint = background_checkpoint and self.sqlite and sqlite_path(url) is not None
        self.engine = make_engine(url, autocheckpoint=not background_checkpoint)
        self._writer = self.engine.execution_options(alignkit_write=True)
        if create:
            try:
                Base.metadata.create_all(self.engine)
            except DBAPIError as e:
                self.engine.dispose()
                raise UserError(f"{safe_url(url)}: cannot create the store: {first_line(e)}") from None
        else:
            self._check_schema()
        upgrade_schema(self)
        if background_checkpoint:
            self._checkpointer = threading.Thread(target=checkpoint_loop, args=(self.engine, self._stop),
                                                  name="wal-checkpoint", daemon=True)
            self._checkpointer.start()

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
            raise UserError(f"{safe_url(self.url)}: not an alignkit collect store (run `alignkit collect init` "
                            f"first): {first_line(e)}") from None

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed on exit (durable before this returns), rolled back on error."""
        with self._lock if self.sqlite else nullcontext(), Session(self._writer, expire_on_commit=False) as s:
            with s.begin():
                yield s

    def audit(self, s: Session, user: str, action: str, **detail: Any) -> None:
        s.add(Audit(at=time.time(), user=user, action=action, detail=detail))


def queue_settings(recipe) -> dict:
    q = recipe.queue
    return {k: getattr(q, k) for k in QUEUE_KEYS}


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
    store.show_judge = bool(settings.get("show_judge", False))
