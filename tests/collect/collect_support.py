"""Shared helpers for the collect tests (also imported by tests/e2e/test_collect_*.py): stores, seeding, a live server."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "correct-horse-1"
_db_counter = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb refuses to run as root: run the cluster as the `postgres` system user then."""
    return ["runuser", "-u", "postgres", "--"] + cmd if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL 15 cluster in a temp dir, listening on 127.0.0.1 only; yields a URL prefix."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail("PostgreSQL 15 server binaries missing: apt-get install postgresql-15")
    base = Path(tempfile.mkdtemp(prefix="alignkit-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                 "--no-sync", "-E", "UTF8"]), check=True, capture_output=True)
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=on -c max_connections=200"
    subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-w", "-t", "60",
                                 "-l", str(base / "log"), "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def new_pg_database(server_url: str) -> str:
    import psycopg2

    name = f"collect_{os.getpid()}_{next(_db_counter)}"
    conn = psycopg2.connect(f"{server_url}/postgres")
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {name}")
    conn.close()
    return f"{server_url}/{name}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> str:
    """The same store test against SQLite (WAL) and against PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/collect.db"
    return new_pg_database(request.getfixturevalue("pg_server"))


def make_store(url: str, overlap: int = 3, **kw):
    from collect.store import Store

    return Store(url, overlap=overlap, create=True, **kw)


def seed(store, prompts: int = 4, pairs: int = 1, users: tuple[str, ...] = (), text=None) -> list[int]:
    """Prompts with `pairs` candidate items each, inserted directly (no model); returns item ids."""
    store.add_prompts([{"prompt": [{"role": "user", "content": f"question {i}?"}], "category": "test"}
                       for i in range(prompts)])
    ids = []
    for pid, _ in store.prompts():
        for k in range(pairs):
            a = text(pid, k, 0) if text else f"answer one to {pid}.{k}"
            b = text(pid, k, 1) if text else f"a different answer two to {pid}.{k}"
            ids.append(store.add_item(pid, (a, "test-gen-a", {"seed": 1}), (b, "test-gen-b", {"seed": 2})))
    add_users(store, users)
    return ids


_HASH: list[str] = []


def add_users(store, names) -> None:
    """Users with PASSWORD; one argon2 hash shared by all (hashing costs ~0.3 s each on 2 busy cores)."""
    from collect.store import User, hash_password

    if not _HASH:
        _HASH.append(hash_password(PASSWORD))
    with store.write() as s:
        for name in names:
            s.add(User(name=name, role="admin" if name.startswith("admin") else "annotator",
                       password_hash=_HASH[0], active=True, created_at=time.time()))


class Server:
    """`python -m collect serve` in a subprocess on a free loopback port."""

    def __init__(self, url: str, workdir: Path, extra: tuple[str, ...] = ()):
        self.url, self.workdir, self.extra = url, workdir, extra
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> "Server":
        import httpx

        env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False")
        self.log = open(self.workdir / f"serve-{self.port}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "collect", "serve", "--store", self.url,
                                      "--no-generate", "--port", str(self.port), *self.extra],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.workdir / f'serve-{self.port}.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not start")

    def kill9(self) -> None:
        self.proc.kill()  # SIGKILL: no shutdown handlers, no flush
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
