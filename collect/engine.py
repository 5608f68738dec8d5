"""The store's database connection: SQLite (WAL, synchronous=FULL, writers lock at BEGIN) or PostgreSQL, the
checks on the URL and the file, the WAL checkpoint thread of the server, and the in-place schema upgrade of
stores made by an older alignkit.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError

from alignkit.errors import UserError

SYSTEM_DIRS = ("/proc", "/sys", "/dev")


def first_line(e: DBAPIError) -> str:
    return (str(e.orig).strip().splitlines() or [type(e.orig).__name__])[0]


def safe_url(url: str) -> str:
    """The URL without a password (postgresql://user:secret@host → postgresql://user:***@host)."""
    head, sep, tail = url.partition("://")
    if "@" in tail and ":" in tail.split("@", 1)[0]:
        user = tail.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{tail.split('@', 1)[1]}"
    return url


def nearest_folder(path: Path, what: str, not_a_folder: str = "is not a directory") -> Path:
    """The closest folder that exists at or above `path`'s parent; a file in the way is one clear error."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what}: {parent} {not_a_folder}")
    return parent


def in_system_dir(path: Path) -> bool:
    """/proc, /sys, /dev or below (the kernel's files: writing a database or pairs there is never meant)."""
    real = str(path.resolve())
    return any(real == d or real.startswith(d + "/") for d in SYSTEM_DIRS)


def check_sqlite_file(url: str, create: bool) -> None:
    """SQLite: a real file path; for anything but init, one that exists (else sqlite creates an empty file)."""
    if not url.startswith("sqlite:///"):
        raise UserError(f"store '{url}': expected sqlite:///path/to/file.db (an in-memory store would lose everything)")
    path = sqlite_path(url)
    if path is None:
        raise UserError(f"store '{url}': an in-memory SQLite store would lose every vote; give a file path")
    sqlite_sync(url)
    p = Path(path)
    if not create:
        if not p.is_file():
            raise UserError(f"{url}: no store at {path} (run `alignkit collect init` first)")
        return
    if p.exists() and not p.is_file():
        raise UserError(f"store '{url}': {path} exists and is not a file")
    nearest_folder(p, f"store '{url}'")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"store '{url}': cannot create {p.parent}: {e.strerror}") from None
    if not os.access(p.parent, os.W_OK) or in_system_dir(p):
        raise UserError(f"store '{url}': cannot write a database in {p.parent}")


def sqlite_sync(url: str) -> str:
    query = url.partition("?")[2]
    params = dict(p.split("=", 1) if "=" in p else (p, "") for p in query.split("&") if p) if query else {}
    sync = params.pop("synchronous", "full").upper()
    if sync not in ("FULL", "NORMAL"):
        raise UserError(f"store '{url}': synchronous must be full or normal")
    if params:
        raise UserError(f"store '{url}': unknown option(s) {', '.join(params)}; only ?synchronous=full|normal")
    return sync


def sqlite_path(url: str) -> str | None:
    """The database file of a sqlite:/// URL; None for an in-memory database."""
    path = url.partition("?")[0][len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    return None if path in ("", ":memory:") else path


def make_engine(url: str, autocheckpoint: bool = True):
    if url.startswith("sqlite"):
        base = url.partition("?")[0]
        sync = sqlite_sync(url)
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
            if not autocheckpoint:  # the server's checkpoint thread does it (checkpoint_loop)
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


def checkpoint_loop(engine, stop, interval_s: float = 0.5) -> None:
    """SQLite server: copy the WAL into the database file off the request path, until `stop` is set.

    By default SQLite checkpoints inside the commit that crosses 1000 WAL pages: that vote also copies the
    pages and fsyncs the database file while every other writer waits for the lock. The server instead turns
    automatic checkpoints off and runs a PASSIVE checkpoint (it never waits for, nor blocks, writers) from
    this thread. Durability is unchanged: a vote is acknowledged once its WAL frames are on disk.
    """
    import sqlite3

    conn = engine.raw_connection()  # one pooled connection, with the engine's pragmas, for the thread's life
    try:
        while not stop.wait(interval_s):
            cur = conn.cursor()
            try:
                cur.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.OperationalError:  # busy/locked: the next round catches up
                pass
            finally:
                cur.close()
    finally:
        conn.close()


# Added since the first release: (table, column, SQL type and default). A store made before them is upgraded
# when it is opened; the backfill puts in what the older store already knows.
ADDED_COLUMNS = (
    ("items", "judge_unsure", "BOOLEAN NOT NULL DEFAULT FALSE"),
    ("assignments", "suggested", "VARCHAR(8)"),
)
UPGRADE_SQL = (
    "UPDATE items SET judge_unsure = TRUE WHERE id IN (SELECT v.item_id FROM votes v JOIN users u ON u.id = v.user_id "
    "WHERE u.role = 'judge' AND v.choice = 'skip' AND v.active = TRUE)",
    "CREATE INDEX IF NOT EXISTS ix_items_queue_unsure ON items (status, judge_unsure, filled, id)",
)


def upgrade_schema(store) -> list[str]:
    """Add the columns (and the queue index) an older store lacks, in one write transaction; what was added."""
    def missing(bind):
        return [(t, c, ddl) for t, c, ddl in ADDED_COLUMNS
                if c not in {col["name"] for col in inspect(bind).get_columns(t)}]

    added = missing(store.engine)
    if added:
        with store.write() as s:
            conn = s.connection()
            # looked at again under the write lock (SQLite), or IF NOT EXISTS (PostgreSQL): two processes opening
            # one old store at once add each column once
            for table, column, ddl in missing(conn):
                guard = "" if store.sqlite else "IF NOT EXISTS "
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {guard}{column} {ddl}"))
            for sql in UPGRADE_SQL:
                conn.execute(text(sql))
    return [f"{t}.{c}" for t, c, _ in added]
