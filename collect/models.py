"""The store's tables: users and sessions, prompts, candidates, items, reservations, votes, audit log.

Times are UNIX seconds (floats), the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[float] = mapped_column(Float)


class LoginSession(Base):
    __tablename__ = "sessions"
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class Prompt(Base):
    __tablename__ = "prompts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the messages: init is idempotent
    messages: Mapped[list] = mapped_column(JSON)
    category: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Candidate(Base):
    __tablename__ = "candidates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    generator: Mapped[str] = mapped_column(String(512))
    sampling: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class Item(Base):
    """One pair to judge. kind: pair (generated), gold (known answer: `first` is better), repeat (blind repeat)."""

    __tablename__ = "items"
    # the queue's order: items a judge was unsure on first, then the fullest, then the oldest
    __table_args__ = (Index("ix_items_queue_unsure", "status", "judge_unsure", "filled", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    first_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    second_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    kind: Mapped[str] = mapped_column(String(8), default="pair")
    repeat_of: Mapped[int | None] = mapped_column(ForeignKey("items.id"), nullable=True)
    gold: Mapped[str | None] = mapped_column(String(8), nullable=True)
    status: Mapped[str] = mapped_column(String(8), default="ready")  # ready | flagged (near-identical, never shown)
    similarity: Mapped[float] = mapped_column(Float, default=0.0)
    # Votes counted so far (kept in the vote/undo transactions): the queue scans this column instead of
    # counting every item's assignments; reservations are counted only for the few candidates it picks.
    filled: Mapped[int] = mapped_column(Integer, default=0)
    # A judge (`collect judge`) skipped it as unsure: the queue hands it to people before any other item.
    judge_unsure: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[float] = mapped_column(Float)


class Assignment(Base):
    """A reservation: `open` until `expires_at`, then `voted` or `skipped`. One row per (item, annotator), ever."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "user_id"), Index("ix_assign_item_state", "item_id", "state"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    left: Mapped[str] = mapped_column(String(8))  # which stored candidate was shown on the left: first | second
    state: Mapped[str] = mapped_column(String(8), default="open")
    # The judge's label (first | second) shown as a suggestion with the item (queue.show_judge); None: none shown
    suggested: Mapped[str | None] = mapped_column(String(8), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class Vote(Base):
    __tablename__ = "votes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    choice: Mapped[str] = mapped_column(String(8))  # as shown: a (left) | b (right) | tie | both_bad | skip
    label: Mapped[str | None] = mapped_column(String(8), nullable=True)  # stored order: first|second|tie|both_bad
    strength: Mapped[str | None] = mapped_column(String(8), nullable=True)
    rationale: Mapped[str] = mapped_column(Text, default="")
    ideal: Mapped[str] = mapped_column(Text, default="")
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    active: Mapped[bool] = mapped_column(Boolean, default=True)  # False once undone; the key stays taken


class Meta(Base):
    """Settings the store remembers between commands (the queue overlap N, for stats and export)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Audit(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    user: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict] = mapped_column(JSON)
