"""Hostile and careless input against collect: the CLI, the JSON API and the Gradio routes (issue 14).

Each case states the exact exit code or HTTP status and a phrase of the one message; none may show a
traceback, and the store's counts (votes, items, prompts, users) must not move, nor any item pass N votes,
and SQLite's `PRAGMA integrity_check` must say ok. The HTTP part runs against a real `collect serve` on
SQLite and on a throwaway PostgreSQL 15 cluster. Every loop is bounded in count and time.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from collect_support import PASSWORD, ROOT, Server, make_store, new_pg_database, seed
from sqlalchemy import func, select, text

from collect.store import Item, LoginSession, Prompt, Store, User, Vote

N = 2
CLIENT_TIMEOUT = 30


# ---- helpers ------------------------------------------------------------------------------------------------

def counts(url: str) -> dict:
    store = Store(url)
    try:
        with store.read() as s:
            out = {t.__tablename__: s.scalar(select(func.count()).select_from(t)) for t in (Vote, Item, Prompt, User)}
            per_item = s.execute(select(Vote.item_id, func.count()).where(Vote.active.is_(True),
                                                                          Vote.label.is_not(None))
                                 .group_by(Vote.item_id)).all()
            out["max_votes_per_item"] = max((n for _, n in per_item), default=0)
            if store.sqlite:
                out["integrity"] = s.execute(text("PRAGMA integrity_check")).scalar()
        return out
    finally:
        store.close()


def tokens_for(url: str, names) -> dict[str, str]:
    """Sessions written straight into the store (as a login would), sparing an argon2 check per user."""
    store, out = Store(url), {}
    with store.write() as s:
        for name in names:
            uid = s.scalar(select(User.id).where(User.name == name))
            out[name] = secrets.token_urlsafe(32)
            s.add(LoginSession(token_sha256=hashlib.sha256(out[name].encode()).hexdigest(), user_id=uid,
                               created_at=time.time(), expires_at=time.time() + 3600))
    store.close()
    return out


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def one_message(body: str) -> None:
    assert "Traceback" not in body and "Internal Server Error" not in body, body[:500]
    assert len(body) < 4000, f"answer of {len(body)} bytes: echoes the input?"


# ---- the CLI, each case a real `python -m collect` subprocess -----------------------------------------------

def cli(*argv: str, cwd: Path, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False", **(env or {}))
    return subprocess.run([sys.executable, "-m", "collect", *argv], cwd=cwd, env=full_env, input=stdin,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A store with N=1 remembered, one item and a user; and the bad files the cases point at."""
    tmp = tmp_path_factory.mktemp("hostile-cli")
    url = f"sqlite:///{tmp}/c.db"
    store = make_store(url, overlap=1)
    store.set_meta(overlap=1, reservation_minutes=15, repeat_every=0, repeat_gap=5)
    seed(store, prompts=1, users=("ann",))
    store.close()
    (tmp / "binary.jsonl").write_bytes(bytes(range(256)) * 8)
    (tmp / "empty.jsonl").write_text("")
    (tmp / "blank.jsonl").write_text("\n\n  \n")
    (tmp / "category.jsonl").write_text('{"prompt": "hi", "category": {"a": 1}}\n')
    (tmp / "longcat.jsonl").write_text(json.dumps({"prompt": "hi", "category": "c" * 65}) + "\n")
    (tmp / "surrogate.jsonl").write_text('{"prompt": "bad \\ud800 text"}\n')
    (tmp / "role.jsonl").write_text(json.dumps({"prompt": [{"role": "hacker", "content": "x"}]}) + "\n")
    (tmp / "content.jsonl").write_text(json.dumps({"prompt": [{"role": "user", "content": ["x"]}]}) + "\n")
    (tmp / "notjson.jsonl").write_text('{"prompt": "fine"}\n{"prompt": \n')
    (tmp / "array.jsonl").write_text('[1, 2, 3]\n')
    (tmp / "deep.jsonl").write_text("[" * 100_000 + "\n")
    good, bad = ({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Berlin."},
                 {"prompt": "2+2?", "chosen": "4"})
    (tmp / "gold-bad2.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    (tmp / "notes.txt").write_text("not a database\n" * 300)
    (tmp / "afile").write_text("a regular file\n")
    (tmp / "adir").mkdir()
    (tmp / "prompts-ok.jsonl").write_text(json.dumps({"prompt": "A new question?"}) + "\n")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    yield {"tmp": tmp, "url": url, "busy": busy.getsockname()[1], "closed": closed_port}
    busy.close()


STORE = "sqlite:///{tmp}/c.db"
CLI_CASES = [  # (id, argv, phrase of the one error line)
    ("binary-prompts", ["init", "--store", STORE, "--prompts", "{tmp}/binary.jsonl"], "not UTF-8 text"),
    ("empty-prompts", ["init", "--store", STORE, "--prompts", "{tmp}/empty.jsonl"], "no records"),
    ("blank-prompts", ["init", "--store", STORE, "--prompts", "{tmp}/blank.jsonl"], "no records"),
    ("category-not-string", ["init", "--store", STORE, "--prompts", "{tmp}/category.jsonl"],
     "category.jsonl:1: 'category' must be a string, got dict"),
    ("category-too-long", ["init", "--store", STORE, "--prompts", "{tmp}/longcat.jsonl"], "longer than 64"),
    ("surrogate-in-prompt", ["init", "--store", STORE, "--prompts", "{tmp}/surrogate.jsonl"],
     "surrogate.jsonl:1: 'prompt' must be valid Unicode"),
    ("unknown-role", ["init", "--store", STORE, "--prompts", "{tmp}/role.jsonl"], "expected system, user or assistant"),
    ("content-not-text", ["init", "--store", STORE, "--prompts", "{tmp}/content.jsonl"], "'prompt' must be valid"),
    ("malformed-json", ["init", "--store", STORE, "--prompts", "{tmp}/notjson.jsonl"],
     "notjson.jsonl:2: malformed JSON"),
    ("json-array-line", ["init", "--store", STORE, "--prompts", "{tmp}/array.jsonl"], "expected a JSON object"),
    ("deeply-nested-json", ["init", "--store", STORE, "--prompts", "{tmp}/deep.jsonl"],
     "deep.jsonl: JSON nested too deeply"),
    ("prompts-is-a-directory", ["init", "--store", STORE, "--prompts", "{tmp}/adir"], "data file not found"),
    ("gold-2nd-record-bad", ["init", "--store", STORE, "--gold", "{tmp}/gold-bad2.jsonl"],
     "gold-bad2.jsonl:2: gold items need 'rejected'"),
    ("store-is-a-text-file", ["stats", "--store", "sqlite:///{tmp}/notes.txt"], "not an alignkit collect store"),
    ("init-on-a-text-file", ["init", "--store", "sqlite:///{tmp}/notes.txt", "--prompts", "{tmp}/prompts-ok.jsonl"],
     "file is not a database"),
    ("store-under-a-file", ["init", "--store", "sqlite:///{tmp}/afile/c.db", "--prompts", "{tmp}/prompts-ok.jsonl"],
     "is not a directory"),
    ("store-in-proc", ["init", "--store", "sqlite:////proc/alignkit-c.db", "--prompts", "{tmp}/prompts-ok.jsonl"],
     "cannot"),
    ("store-is-a-directory", ["init", "--store", "sqlite:///{tmp}/adir", "--prompts", "{tmp}/prompts-ok.jsonl"],
     "is not a file"),
    ("in-memory-store", ["stats", "--store", "sqlite://"], "in-memory"),
    ("in-memory-store-2", ["init", "--store", "sqlite:///:memory:"], "in-memory"),
    ("missing-store", ["stats", "--store", "sqlite:///{tmp}/missing.db"], "no store at"),
    ("unknown-url-option", ["stats", "--store", STORE + "?mode=ro"], "unknown option(s) mode"),
    ("unknown-url-flag", ["stats", "--store", STORE + "?cache"], "unknown option(s) cache"),
    ("bad-synchronous", ["stats", "--store", STORE + "?synchronous=off"], "synchronous must be"),
    ("refused-postgres", ["init", "--store", "postgresql://postgres@127.0.0.1:{closed}/x"], "refused"),
    ("export-to-sys", ["export", "--store", STORE, "--out", "/sys/pairs.jsonl"], "cannot write in /sys"),
    ("export-under-a-file", ["export", "--store", STORE, "--out", "{tmp}/afile/pairs.jsonl"], "is a file, not a dir"),
    ("export-onto-a-directory", ["export", "--store", STORE, "--out", "{tmp}/adir"], "is a directory"),
    ("export-bad-agreement", ["export", "--store", STORE, "--out", "{tmp}/p.jsonl", "--min-agreement", "2"],
     "--min-agreement"),
    ("serve-port-70000", ["serve", "--store", STORE, "--no-generate", "--port", "70000"], "expected 1–65535"),
    ("serve-port-busy", ["serve", "--store", STORE, "--no-generate", "--port", "{busy}"], "cannot listen"),
    ("fullwidth-user-name", ["users", "add", "ｒｏｏｔ", "--store", STORE, "--password-stdin"], "ASCII"),
    ("user-name-with-space", ["users", "add", "al ice", "--store", STORE, "--password-stdin"], "ASCII"),
    ("short-password", ["users", "add", "bob", "--store", STORE, "--password-stdin"], "at least 8 characters",
     "short\n"),
    ("overrides-without-config", ["stats", "--store", STORE, "queue.overlap=5"], "overrides need --config"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_line_and_exit_2(files, case):
    _id, argv, phrase, *stdin = case
    before = counts(files["url"])
    fill = {"{tmp}": str(files["tmp"]), "{busy}": str(files["busy"]), "{closed}": str(files["closed"])}
    args = []
    for a in argv:
        for k, v in fill.items():
            a = a.replace(k, v)
        args.append(a)
    r = cli(*args, cwd=files["tmp"], stdin=stdin[0] if stdin else "a-long-password\n")
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr + r.stdout
    assert counts(files["url"]) == before
    assert not (files["tmp"] / "missing.db").exists()  # a failed command leaves no empty database behind
    assert Store(files["url"]).meta("overlap") == 1  # nor resets the stored N (issue 14 item 7)


def test_cli_keeps_the_stored_n_and_stores_gold_once(files, tmp_path):
    """Issue 14 items 7 and 8: init without --config keeps N; a fixed gold file is stored once, however often."""
    url = f"sqlite:///{tmp_path}/g.db"
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Berlin."}) + "\n"
                    + json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n")
    r = cli("init", "--store", url, "--config", "recipes/smollm2/collect.yaml", "queue.overlap=1", "--gold",
            str(gold), "--prompts", str(files["tmp"] / "prompts-ok.jsonl"), cwd=ROOT)
    assert r.returncode == 0 and "1 votes per item" in r.stdout and "gold items added: 2" in r.stdout, r.stderr
    for _ in range(2):
        r = cli("init", "--store", url, "--gold", str(gold), "--prompts", str(files["tmp"] / "prompts-ok.jsonl"),
                cwd=ROOT)
        assert r.returncode == 0 and "gold items added: 0 (already stored: 2)" in r.stdout, r.stdout + r.stderr
        assert "1 votes per item" in r.stdout and "prompts added: 0" in r.stdout
    store = Store(url)
    assert store.item_count() == 2 and store.meta("overlap") == 1
    r = cli("init", "--store", url, "--prompts", str(files["tmp"] / "empty.jsonl"), "--config",
            "recipes/smollm2/collect.yaml", "queue.overlap=4", cwd=ROOT)
    assert r.returncode == 2 and store.meta("overlap") == 1  # a failing init with --config writes nothing


# ---- the JSON API and the Gradio routes, against a real server ----------------------------------------------

USERS = ("ann", "bea", "cid", "dee", "eve", "fay", "admin1", "victim", "racer", "skipper", "voter")


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def served(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"hostile-{request.param}")
    url = (f"sqlite:///{tmp}/c.db" if request.param == "sqlite"
           else new_pg_database(request.getfixturevalue("pg_server")))
    store = make_store(url, overlap=N)
    store.set_meta(overlap=N, reservation_minutes=15, repeat_every=0, repeat_gap=5)
    seed(store, prompts=12, users=USERS)
    store.close()
    server = Server(url, tmp).start()  # no --config: the server must keep N=2 (issue 14 item 7)
    yield {"url": url, "base": server.base, "server": server, "tokens": tokens_for(url, USERS), "tmp": tmp}
    server.stop()


@pytest.fixture()
def c(served):
    with httpx.Client(base_url=served["base"], timeout=CLIENT_TIMEOUT) as client:
        yield client


def fresh_item(c, token):
    r = c.get("/api/v1/next", headers=bearer(token))
    assert r.status_code == 200
    return r.json()["item"]


BIG = "x" * 1_000_000
API_CASES = [  # (id, method, path, kwargs, auth user or None, status, phrase in the answer)
    ("vote-unauthenticated", "POST", "/api/v1/votes", {"json": {"choice": "a"}}, None, 401, "log in first"),
    ("vote-assignment-2**63", "POST", "/api/v1/votes",
     {"json": {"assignment_id": 2**63, "choice": "a", "idempotency_key": "k"}}, "ann", 422, "assignment_id"),
    ("vote-assignment-2**31", "POST", "/api/v1/votes",
     {"json": {"assignment_id": 2**31, "choice": "a", "idempotency_key": "k"}}, "ann", 422, "assignment_id"),
    ("vote-assignment-negative", "POST", "/api/v1/votes",
     {"json": {"assignment_id": -5, "choice": "a", "idempotency_key": "k"}}, "ann", 422, "assignment_id"),
    ("vote-assignment-string", "POST", "/api/v1/votes",
     {"json": {"assignment_id": "abc", "choice": "a", "idempotency_key": "k"}}, "ann", 422, "assignment_id"),
    ("vote-assignment-list", "POST", "/api/v1/votes",
     {"json": {"assignment_id": [1], "choice": "a", "idempotency_key": "k"}}, "ann", 422, "assignment_id"),
    ("vote-choice-number", "POST", "/api/v1/votes",
     {"json": {"assignment_id": 1, "choice": 5, "idempotency_key": "k"}}, "ann", 422, "choice"),
    ("vote-choice-unknown", "POST", "/api/v1/votes",
     {"json": {"assignment_id": 1, "choice": "maybe", "idempotency_key": "k"}}, "ann", 409, "choice must be"),
    ("vote-strength-unknown", "POST", "/api/v1/votes",
     {"json": {"assignment_id": 1, "choice": "a", "strength": "extreme", "idempotency_key": "k"}}, "ann", 409,
     "strength must be"),
    ("vote-key-129-chars", "POST", "/api/v1/votes",
     {"json": {"assignment_id": 1, "choice": "a", "idempotency_key": "k" * 129}}, "ann", 422, "idempotency_key"),
    ("vote-key-empty", "POST", "/api/v1/votes",
     {"json": {"assignment_id": 1, "choice": "a", "idempotency_key": ""}}, "ann", 422, "idempotency_key"),
    ("vote-surrogate-rationale", "POST", "/api/v1/votes",
     {"content": b'{"assignment_id": 1, "choice": "a", "idempotency_key": "k", "rationale": "\\ud800"}',
      "headers": {"content-type": "application/json"}}, "ann", 422, "unicode"),
    ("vote-surrogate-key", "POST", "/api/v1/votes",
     {"content": b'{"assignment_id": 1, "choice": "a", "idempotency_key": "\\udfff"}',
      "headers": {"content-type": "application/json"}}, "ann", 422, "unicode"),
    ("vote-1mb-rationale-not-echoed", "POST", "/api/v1/votes",
     {"json": {"assignment_id": 1, "choice": "a", "idempotency_key": "k", "rationale": "r" * 900_000}}, "ann",
     422, "rationale"),
    ("vote-malformed-json", "POST", "/api/v1/votes",
     {"content": b'{"assignment_id": 1,', "headers": {"content-type": "application/json"}}, "ann", 422, "loc"),
    ("vote-deeply-nested-json", "POST", "/api/v1/votes",
     {"content": b"[" * 500_000, "headers": {"content-type": "application/json"}}, "ann", 400, "parsing the body"),
    ("vote-json-as-text-plain", "POST", "/api/v1/votes",
     {"content": b'{"assignment_id": 1, "choice": "a", "idempotency_key": "k"}',
      "headers": {"content-type": "text/plain"}}, "ann", 422, "loc"),
    ("vote-someone-elses-reservation", "POST", "/api/v1/votes",
     {"json": {"assignment_id": 1, "choice": "a", "idempotency_key": "k-other"}}, "fay", 409, "no such reservation"),
    ("vote-over-1mib-body", "POST", "/api/v1/votes", {"content": b" " * (1 << 21),
                                                      "headers": {"content-type": "application/json"}}, "ann",
     413, "over"),
    ("login-surrogate-name", "POST", "/api/v1/login",
     {"content": b'{"username": "\\ud800", "password": "whatever-1"}', "headers": {"content-type": "application/json"}},
     None, 422, "unicode"),
    ("login-surrogate-password", "POST", "/api/v1/login",
     {"content": b'{"username": "ann", "password": "\\ud800xxxxxxx"}', "headers": {"content-type": "application/json"}},
     None, 422, "unicode"),
    ("login-name-1mb-json", "POST", "/api/v1/login", {"json": {"username": "n" * 900_000, "password": "x"}}, None,
     422, "username"),
    ("login-name-1mb-form", "POST", "/login", {"data": {"username": "n" * 900_000, "password": "x"}}, None, 422,
     "username"),
    ("login-form-surrogate-bytes", "POST", "/login",
     {"content": b"username=%ED%A0%80&password=whatever-1",
      "headers": {"content-type": "application/x-www-form-urlencoded"}},
     None, 401, "Wrong user name or password"),
    ("login-form-invalid-utf8", "POST", "/login",
     {"content": b"username=%FF%FE&password=%C3", "headers": {"content-type": "application/x-www-form-urlencoded"}},
     None, 401, "Wrong user name or password"),
    ("vote-rationale-object", "POST", "/api/v1/votes",
     {"json": {"assignment_id": 1, "choice": "a", "idempotency_key": "k", "rationale": {"a": 1}}}, "ann", 422,
     "rationale"),
    ("next-with-post", "POST", "/api/v1/next", {}, "ann", 405, "Method Not Allowed"),
    ("stats-as-annotator", "GET", "/api/v1/admin/stats", {}, "ann", 403, "admins only"),
    ("login-fullwidth-name", "POST", "/api/v1/login", {"json": {"username": "ａｎｎ", "password": PASSWORD}}, None,
     401, "wrong user name"),
    ("login-rtl-override-name", "POST", "/api/v1/login", {"json": {"username": "ann\u202e", "password": PASSWORD}},
     None, 401, "wrong user name"),
    ("login-array-body", "POST", "/api/v1/login", {"json": ["ann", PASSWORD]}, None, 422, "loc"),
    ("login-missing-password", "POST", "/api/v1/login", {"json": {"username": "ann"}}, None, 422, "password"),
    ("login-64mb-declared-body", "POST", "/api/v1/login",
     {"headers": {"content-length": str(64 << 20), "content-type": "application/json"}, "content": b"{}"}, None,
     413, "over"),
    ("bearer-10kb-token", "GET", "/api/v1/progress", {"headers": {"Authorization": "Bearer " + "t" * 10_000}}, None,
     401, "log in first"),
    ("cookie-garbage", "GET", "/api/v1/next", {"headers": {"Cookie": "alignkit_session=%ff%fe\x7f"}}, None, 401,
     "log in first"),
    ("cross-origin-form-login", "POST", "/login",
     {"data": {"username": "ann", "password": PASSWORD}, "headers": {"Origin": "http://127.0.0.1:9"}}, None, 403,
     "cross-origin"),
    ("cross-site-vote", "POST", "/api/v1/undo", {"headers": {"Sec-Fetch-Site": "same-site"}}, "ann", 403,
     "cross-origin"),
    ("null-origin-logout", "POST", "/logout", {"headers": {"Origin": "null"}}, "ann", 403, "cross-origin"),
    ("cross-origin-referer-login", "POST", "/api/v1/login",
     {"json": {"username": "ann", "password": PASSWORD}, "headers": {"Referer": "http://evil.example/x"}}, None,
     403, "cross-origin"),
    ("export-min-votes-text", "GET", "/api/v1/admin/export?min_votes=abc", {}, "admin1", 422, "min_votes"),
    ("export-min-agreement-5", "GET", "/api/v1/admin/export?min_agreement=5", {}, "admin1", 422, "min_agreement"),
    ("export-min-agreement-nan", "GET", "/api/v1/admin/export?min_agreement=nan", {}, "admin1", 422,
     "min_agreement"),
    ("export-as-annotator", "GET", "/api/v1/admin/export", {}, "ann", 403, "admins only"),
    ("gradio-call-event-of-another", "GET", "/ui/gradio_api/call/on_load/0123abcd", {}, "ann", 403,
     "direct Gradio calls"),
    ("gradio-call-post", "POST", "/ui/gradio_api/call/on_submit", {"json": {"data": [None, "a", "clear", "", ""]}},
     "ann", 403, "direct Gradio calls"),
    ("gradio-run-predict", "POST", "/ui/gradio_api/run/predict", {"json": {"data": [], "fn_index": 0}}, "ann", 403,
     "direct Gradio calls"),
    ("gradio-join-cross-origin", "POST", "/ui/gradio_api/queue/join",
     {"json": {"data": [], "fn_index": 0, "session_hash": "h-x"}, "headers": {"Origin": "http://localhost:1"}},
     "ann", 403, "cross-origin"),
    ("gradio-join-over-1mib", "POST", "/ui/gradio_api/queue/join",
     {"json": {"data": [BIG, BIG], "fn_index": 0, "session_hash": "h-big"}}, "ann", 413, "over"),
    ("gradio-upload-over-1mib", "POST", "/ui/gradio_api/upload", {"files": {"files": ("a.bin", b"0" * (2 << 20))}},
     "ann", 413, "over"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_is_one_clear_4xx(served, c, case):
    _id, method, path, kwargs, user, status, phrase = case
    before = counts(served["url"])
    kwargs = json.loads(json.dumps(kwargs, default=str)) if "files" not in kwargs and "content" not in kwargs \
        else dict(kwargs)
    headers = dict(kwargs.pop("headers", {}))
    if user:
        headers.update(bearer(served["tokens"][user]))
    if "content-length" in headers:  # a declared 64 MB body: the answer must come before the body is sent
        r = raw_request(served["base"], method, path, headers, kwargs.get("content", b""))
        status_got, body = r
    else:
        resp = c.request(method, path, headers=headers, **kwargs)
        status_got, body = resp.status_code, resp.text
    assert status_got == status, (status_got, body[:300])
    assert phrase in body, body[:300]
    one_message(body)
    assert counts(served["url"]) == before


def raw_request(base: str, method: str, path: str, headers: dict, body: bytes) -> tuple[int, str]:
    """Send headers that declare a large body and only a few bytes of it; read the answer (5 s at most)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        s.sendall(head.encode() + body)
        data = b""
        deadline = time.time() + 5
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 10:
            chunk = s.recv(65536)
            if not chunk or time.time() > deadline:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1].decode("utf-8", "replace")


def test_chunked_body_over_the_limit_is_refused(served, c):
    """No Content-Length: the limit holds while the body is read (issue 14 item 4)."""
    def chunks():
        for _ in range(40):
            yield b" " * 65536  # 2.5 MiB in all

    r = c.post("/api/v1/votes", content=chunks(), headers={**bearer(served["tokens"]["ann"]),
                                                           "content-type": "application/json"})
    assert r.status_code == 413 and "over" in r.text


def test_cors_is_closed(served, c):
    """Issue 14 item 9: no origin, loopback or not, gets Access-Control-Allow-Origin (nor credentials)."""
    tok = served["tokens"]["ann"]
    for origin, host in (("http://127.0.0.1:9", None), ("http://localhost:1", None), ("null", None),
                         ("http://evil.example", "collect.example.org")):
        headers = {"Origin": origin, **({"Host": host} if host else {})}
        pre = c.options("/ui/gradio_api/queue/join", headers={**headers, "Access-Control-Request-Method": "POST",
                                                               "Access-Control-Request-Headers": "content-type"})
        simple = c.get("/ui/config", headers={**headers, **bearer(tok)})
        api = c.get("/api/v1/progress", headers={**headers, **bearer(tok)})
        for r in (pre, simple, api):
            assert "access-control-allow-origin" not in r.headers, (origin, r.request.url, r.headers)
            assert r.headers.get("access-control-allow-credentials") != "true"
        assert pre.status_code == 400 and simple.status_code == 200 and api.status_code == 200


def test_same_origin_posts_still_work(served, c):
    """The CSRF check refuses other origins only: the app's own pages (Origin = Host) and plain clients pass."""
    own = served["base"]
    r = c.post("/api/v1/logout", headers={"Origin": own, "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 200 and r.json() == {"ended": False}


def test_logout_ends_bearer_and_cookie_sessions_and_get_changes_nothing(served, c):
    """Issue 14 item 5: /logout with a bearer token used to answer 303 and leave the token working."""
    t1, t2, t3 = (tokens_for(served["url"], ["dee"])["dee"] for _ in range(3))
    assert c.get("/logout", headers=bearer(t1)).status_code == 200  # a page with a button: GET ends nothing
    assert c.get("/api/v1/progress", headers=bearer(t1)).status_code == 200
    assert c.post("/api/v1/logout", headers=bearer(t1)).json() == {"ended": True}
    assert c.get("/api/v1/progress", headers=bearer(t1)).status_code == 401
    r = c.post("/logout", headers=bearer(t2))
    assert r.status_code == 303 and c.get("/api/v1/progress", headers=bearer(t2)).status_code == 401
    with httpx.Client(base_url=served["base"], timeout=CLIENT_TIMEOUT, cookies={"alignkit_session": t3}) as jar:
        assert jar.get("/api/v1/progress").status_code == 200
        assert jar.post("/logout").status_code == 303
    assert c.get("/api/v1/progress", headers=bearer(t3)).status_code == 401


def test_password_reset_ends_sessions_on_the_running_server(served, c):
    """Issue 14 item 5: `collect users add` with a new password (another process) ends the old token within
    the server's 5-second session cache."""
    tok = tokens_for(served["url"], ["eve"])["eve"]
    assert c.get("/api/v1/progress", headers=bearer(tok)).status_code == 200
    r = cli("users", "add", "eve", "--store", served["url"], "--password-stdin", cwd=served["tmp"],
            stdin="a-brand-new-password\n")
    assert r.returncode == 0, r.stderr
    deadline, status = time.time() + 8, 200
    while time.time() < deadline and status == 200:
        time.sleep(0.5)
        status = c.get("/api/v1/progress", headers=bearer(tok)).status_code
    assert status == 401


def test_parallel_logins_cannot_pass_the_throttle(served):
    """Issue 14 item 2: 20 simultaneous logins for one name: at most 5 passwords are checked, the rest 429.
    The right password is among the 20 and may win only if it is among the first 5 checked."""
    store = Store(served["url"])
    before = sum(a["action"] in ("login", "login_failed") and a["user"] == "racer" for a in store.audit_log(5000))
    passwords = [f"wrong-guess-{i}" for i in range(19)] + [PASSWORD]
    barrier = threading.Barrier(20)

    def attempt(pw):
        barrier.wait()
        return httpx.post(f"{served['base']}/api/v1/login", json={"username": "racer", "password": pw},
                          timeout=60).status_code

    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(attempt, passwords))
    checked = sum(a["action"] in ("login", "login_failed") and a["user"] == "racer"
                  for a in store.audit_log(5000)) - before
    assert checked <= 5 and statuses.count(429) >= 15, statuses
    assert set(statuses) <= {200, 401, 429}


def test_double_submit_across_tabs_is_one_vote(served, c):
    """Two tabs send the same submit at the same instant: one vote, the other a replay of it."""
    tok = served["tokens"]["bea"]
    item = fresh_item(c, tok)
    vote = {"assignment_id": item["assignment_id"], "choice": "a", "idempotency_key": item["idempotency_key"]}
    barrier = threading.Barrier(4)

    def send(_):
        barrier.wait()
        return httpx.post(f"{served['base']}/api/v1/votes", json=vote, headers=bearer(tok), timeout=60).json()

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(send, range(4)))
    assert len({g["vote_id"] for g in got}) == 1 and sum(not g["replay"] for g in got) == 1
    other = fresh_item(c, tok)  # the key of reservation 1 on reservation 2: refused (issue 14 item 6)
    r = c.post("/api/v1/votes", headers=bearer(tok), json=dict(vote, assignment_id=other["assignment_id"]))
    assert r.status_code == 409 and "another reservation" in r.text
    assert counts(served["url"])["max_votes_per_item"] <= N


def test_parallel_undo_of_skips_and_votes_stay_within_n(served, c):
    """Issue 14 item 1 over HTTP: skip, others fill the item, then undo and vote at once: never over N."""
    toks = served["tokens"]
    item = fresh_item(c, toks["skipper"])
    r = c.post("/api/v1/votes", headers=bearer(toks["skipper"]), json={
        "assignment_id": item["assignment_id"], "choice": "skip", "idempotency_key": item["idempotency_key"]})
    assert r.status_code == 200
    store = Store(served["url"])

    def votes_on_x():
        with store.read() as s:
            return s.scalar(select(func.count()).select_from(Vote).where(
                Vote.item_id == item["item_id"], Vote.active.is_(True), Vote.label.is_not(None)))

    for name in ("voter", "cid", "ann"):  # others fill the skipped item up to N
        if votes_on_x() >= N:
            break
        shown = fresh_item(c, toks[name])
        while shown["item_id"] != item["item_id"]:
            c.post("/api/v1/votes", headers=bearer(toks[name]), json={
                "assignment_id": shown["assignment_id"], "choice": "skip", "idempotency_key": shown["idempotency_key"]})
            shown = fresh_item(c, toks[name])
        c.post("/api/v1/votes", headers=bearer(toks[name]), json={
            "assignment_id": shown["assignment_id"], "choice": "b", "idempotency_key": shown["idempotency_key"]})
    assert votes_on_x() == N
    r = c.post("/api/v1/undo", headers=bearer(toks["skipper"]))
    assert r.status_code == 409 and "filled by others" in r.text
    assert counts(served["url"])["max_votes_per_item"] <= N


def test_server_without_config_keeps_the_stored_n(served, c):
    """Issue 14 item 7: `collect serve` without --config used to write N=3 over the stored N=2."""
    assert Store(served["url"]).meta("overlap") == N


# ---- Gradio: the UI's own routes ----------------------------------------------------------------------------

def gradio_fn(c, token, name: str) -> int:
    config = c.get("/ui/config", headers=bearer(token)).json()
    names = {d.get("api_name"): d["id"] for d in config["dependencies"]}
    fns = [d["id"] for d in config["dependencies"] if d.get("api_name") == name]
    assert fns, names
    return fns[0]


def gradio_call(c, token, session_hash: str, fn_index: int, data: list, timeout: float = 30) -> list:
    """One event through Gradio's queue (join, then read the SSE stream until completion); its output."""
    r = c.post("/ui/gradio_api/queue/join", headers=bearer(token),
               json={"data": data, "fn_index": fn_index, "session_hash": session_hash, "event_data": None,
                     "trigger_id": None})
    assert r.status_code == 200, r.text
    deadline = time.time() + timeout
    with c.stream("GET", f"/ui/gradio_api/queue/data?session_hash={session_hash}", headers=bearer(token),
                  timeout=timeout) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if time.time() > deadline:
                break
            if line.startswith("data: "):
                msg = json.loads(line[6:])
                if msg.get("msg") == "process_completed":
                    assert msg.get("success"), msg
                    return msg["output"]["data"]
    raise AssertionError("no completion from Gradio")


def test_gradio_session_hash_belongs_to_its_user(served, c):
    """Issue 14 item 12: another user naming a known session_hash gets 403, on every route that takes one."""
    ann, bea = served["tokens"]["ann"], served["tokens"]["fay"]
    load = gradio_fn(c, ann, "on_load")
    h = "victim-hash-" + secrets.token_hex(4)
    out = gradio_call(c, ann, h, load, [])
    assert "ak-answer" in json.dumps(out)
    for method, path, body in (("GET", f"/ui/gradio_api/queue/data?session_hash={h}", None),
                               ("POST", "/ui/gradio_api/queue/join", {"data": [], "fn_index": load, "session_hash": h}),
                               ("GET", f"/ui/gradio_api/heartbeat/{h}", None)):
        r = c.request(method, path, headers=bearer(bea), json=body)
        assert r.status_code == 403 and "another user" in r.text, (path, r.status_code, r.text[:200])


@pytest.mark.parametrize("choice, rationale, status", [
    ("maybe", "", "Value: 'maybe'"),  # Gradio's own check of the radio's choices: an error event, no vote
    ("a", "bad \ud800 text", "Not recorded: rationale"),
    ("a", "r" * 20_001, "Not recorded: rationale"),
])
def test_gradio_submit_refuses_bad_values_with_a_message(served, c, choice, rationale, status):
    tok = served["tokens"]["ann"]
    h = "h-" + secrets.token_hex(6)
    load, submit = gradio_fn(c, tok, "on_load"), gradio_fn(c, tok, "on_submit")
    gradio_call(c, tok, h, load, [])
    before = counts(served["url"])
    body = json.dumps({"data": [None, choice, "clear", rationale, ""], "fn_index": submit, "session_hash": h,
                       "event_data": None, "trigger_id": None}, ensure_ascii=True)
    r = c.post("/ui/gradio_api/queue/join", headers={**bearer(tok), "content-type": "application/json"},
               content=body.encode())
    assert r.status_code == 200, r.text
    with c.stream("GET", f"/ui/gradio_api/queue/data?session_hash={h}", headers=bearer(tok)) as stream:
        out = None
        for line in stream.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:]).get("msg") == "process_completed":
                out = json.loads(line[6:])
                break
    assert out is not None
    assert status in json.dumps(out["output"], ensure_ascii=False), out
    assert "Traceback" not in json.dumps(out)
    assert counts(served["url"]) == before
