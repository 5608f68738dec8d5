"""Production feedback in the collect store: every served answer, thumbs on it, and side-by-side preferences,
turned into the next round's KTO rows and DPO pairs.

In the spine because two stages use it: `serve` writes (each answer is stored before the client sees it, so
feedback can never name an answer the store does not have) and `collect export --source production` reads.
The tables live in the collect store's database (`production_*`), next to the annotators' votes, with the
same durability (SQLite WAL fsynced at each commit) and the same idempotency rule: a retried submission
with the same key is answered from the store, a key reused for different content is a conflict.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text, create_engine, event, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from alignkit.errors import UserError


class Base(DeclarativeBase):
    pass


class Response(Base):
    __tablename__ = "production_responses"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    key_name: Mapped[str] = mapped_column(String(64))
    user: Mapped[str | None] = mapped_column(String(256), nullable=True)
    model: Mapped[str] = mapped_column(String(256))
    run_id: Mapped[str] = mapped_column(String(256), index=True)
    variant: Mapped[str | None] = mapped_column(String(16), nullable=True)
    messages: Mapped[list] = mapped_column(JSON)
    answer: Mapped[str] = mapped_column(Text)
    latency_ms: Mapped[float] = mapped_column(Float)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    refused: Mapped[int | None] = mapped_column(Integer, nullable=True)  # detector verdict on sampled answers


class Feedback(Base):
    """A thumb on one answer (kind=rating) or a preference between two answers to the same prompt."""

    __tablename__ = "production_feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(16))
    response_id: Mapped[str] = mapped_column(ForeignKey("production_responses.id"), index=True)
    other_id: Mapped[str | None] = mapped_column(ForeignKey("production_responses.id"), nullable=True)
    rating: Mapped[str | None] = mapped_column(String(8), nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_name: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    payload_sha256: Mapped[str] = mapped_column(String(64))


class UnknownResponse(LookupError):
    """Feedback names a response id the store does not hold."""


class Conflict(Exception):
    """An idempotency key reused for different feedback."""


def engine(url: str):
    """A SQLAlchemy engine for the collect store URL (sqlite:///path or postgresql://…), tables created."""
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        eng = create_engine(url.partition("?")[0], connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(eng, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # an acknowledged answer or thumb survives kill -9 and power loss
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
    elif url.startswith(("postgres://", "postgresql://", "postgresql+psycopg2://")):
        eng = create_engine("postgresql+psycopg2://" + url.split("://", 1)[1], pool_pre_ping=True)
    else:
        raise UserError(f"feedback store '{url}': expected sqlite:///path or postgresql://user@host/db")
    try:
        Base.metadata.create_all(eng)
    except DBAPIError as e:
        raise UserError(f"feedback store '{url.split('@')[-1]}': {str(e.orig).splitlines()[0]}") from None
    return eng


def record_response(eng, **row: Any) -> None:
    """Store one served answer (committed before the client is answered)."""
    with Session(eng) as s, s.begin():
        s.add(Response(created_at=time.time(), **row))


def submit(eng, key_name: str, idempotency_key: str | None, *, response_id: str, other_id: str | None = None,
           rating: str | None = None, comment: str | None = None) -> dict:
    """Store a thumb (`rating`) or a preference (`response_id` preferred over `other_id`); replay-safe."""
    payload = json.dumps([response_id, other_id, rating, comment], sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()
    key = idempotency_key or f"auto:{key_name}:{time.time_ns()}"
    kind = "preference" if other_id else "rating"
    try:
        with Session(eng) as s, s.begin():
            wanted = [response_id] + ([other_id] if other_id else [])
            found = {r.id: r for r in s.scalars(select(Response).where(Response.id.in_(wanted)))}
            missing = [r for r in wanted if r not in found]
            if missing:
                raise UnknownResponse(missing[0])
            if other_id and found[response_id].messages != found[other_id].messages:
                raise UserError("a preference compares two answers to the same conversation; these two answered "
                                "different messages")
            s.add(Feedback(idempotency_key=key, payload_sha256=digest, kind=kind, response_id=response_id,
                           other_id=other_id, rating=rating, comment=comment, key_name=key_name,
                           created_at=time.time()))
            rated = found[response_id]
            return {"stored": True, "replay": False, "kind": kind, "run": rated.run_id, "variant": rated.variant}
    except IntegrityError:  # the key is taken: the same feedback again is a replay, other feedback a conflict
        with Session(eng) as s:
            earlier = s.scalar(select(Feedback).where(Feedback.idempotency_key == key))
        if earlier is None or earlier.payload_sha256 != digest:
            raise Conflict(key) from None
        with Session(eng) as s:
            rated = s.get(Response, response_id)
        return {"stored": True, "replay": True, "kind": kind, "run": rated.run_id, "variant": rated.variant}


def stats(eng) -> list[dict]:
    """Per (run, variant): answers, latency p50/p99, thumbs-up rate, the detector's refusal rate on the sample."""
    with Session(eng) as s:
        rows = s.execute(select(Response.run_id, Response.variant, Response.latency_ms, Response.refused)).all()
        thumbs = s.execute(select(Response.run_id, Response.variant, Feedback.rating, func.count())
                           .join(Feedback, Feedback.response_id == Response.id).where(Feedback.kind == "rating")
                           .group_by(Response.run_id, Response.variant, Feedback.rating)).all()
    groups: dict[tuple, dict] = {}
    for run_id, variant, latency, refused in rows:
        g = groups.setdefault((run_id, variant), {"run": run_id, "variant": variant, "latencies": [], "sampled": 0,
                                                  "refused": 0, "up": 0, "down": 0})
        g["latencies"].append(latency)
        if refused is not None:
            g["sampled"] += 1
            g["refused"] += refused
    for run_id, variant, rating, count in thumbs:
        if (run_id, variant) in groups and rating in ("up", "down"):
            groups[(run_id, variant)][rating] += count
    out = []
    for g in groups.values():
        lat = sorted(g.pop("latencies"))
        rated = g["up"] + g["down"]
        out.append({**g, "answers": len(lat), "p50_ms": lat[len(lat) // 2], "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                    "thumbs_up_rate": g["up"] / rated if rated else None,
                    "refusal_rate": g["refused"] / g["sampled"] if g["sampled"] else None})
    return sorted(out, key=lambda g: (g["run"], g["variant"] or ""))


def export(eng, out_dir: str | Path) -> dict:
    """Write kto.jsonl (thumbs: the latest per answer and API key), dpo.jsonl (preferences) and prompts.jsonl
    (the production conversations, for `collect init --prompts` to queue for annotators)."""
    from alignkit.runs import write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with Session(eng) as s:
        answers = {r.id: r for r in s.scalars(select(Response))}
        feedback = list(s.scalars(select(Feedback).order_by(Feedback.id)))
    latest: dict[tuple, Feedback] = {}
    pairs = []
    for f in feedback:
        if f.kind == "rating":
            latest[(f.response_id, f.key_name)] = f
        else:
            won, lost = answers[f.response_id], answers[f.other_id]
            pairs.append({"prompt": won.messages, "chosen": [{"role": "assistant", "content": won.answer}],
                          "rejected": [{"role": "assistant", "content": lost.answer}],
                          "metadata": {"source": "production", "chosen_response": won.id, "rejected_response": lost.id,
                                       "chosen_run": won.run_id, "rejected_run": lost.run_id}})
    kto = [{"prompt": answers[f.response_id].messages,
            "completion": [{"role": "assistant", "content": answers[f.response_id].answer}], "label": f.rating == "up",
            "metadata": {"source": "production", "response": f.response_id, "run": answers[f.response_id].run_id,
                         "variant": answers[f.response_id].variant, "comment": f.comment}}
           for f in latest.values()]
    seen, prompts = set(), []
    for r in answers.values():
        key = json.dumps(r.messages, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append({"prompt": r.messages, "category": "production"})
    files = {"kto": out / "kto.jsonl", "dpo": out / "dpo.jsonl", "prompts": out / "prompts.jsonl"}
    for name, rows in (("kto", kto), ("dpo", pairs), ("prompts", prompts)):
        write_text(files[name], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"kto_rows": len(kto), "dpo_pairs": len(pairs), "prompts": len(prompts),
            "files": {k: str(v) for k, v in files.items()}}
