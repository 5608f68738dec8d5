"""What stands between the network and the store: login throttling, the session cache, and one ASGI guard.

The guard runs before any route (FastAPI's and Gradio's) and, in this order:

1. refuses a body larger than `max_body` bytes (413), by Content-Length and while reading a chunked body;
2. refuses state-changing requests (POST, PUT, PATCH, DELETE) sent by another origin (403): a browser names
   the page that sent it in `Origin`/`Sec-Fetch-Site`; other loopback ports count as other origins;
3. answers 401 on /api/… (except login) before the body is read or parsed, when there is no session;
4. ties each Gradio `session_hash` to the user who first used it: another user naming it gets 403; Gradio's
   direct-call routes (`/call/…`, `/run/…`, whose event ids are not tied to a session) are not served: the UI
   sends every event through the queue.

CORS stays closed: the app answers no cross-origin read (server.create_app installs Starlette's CORS
middleware with no allowed origin, which also switches off Gradio's own permissive one).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque
from urllib.parse import parse_qs, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse

COOKIE = "alignkit_session"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
DIRECT_CALLS = ("/ui/gradio_api/call/", "/ui/gradio_api/run/", "/ui/call/", "/ui/run/")
MAX_BODY = 1 << 20  # 1 MiB: a vote is at most 70,000 characters of text (~280 kB of UTF-8)


class Throttle:
    """Login attempts per user name and per client address within `window` seconds.

    An attempt is counted *before* its password is checked (`begin`), so parallel requests cannot all slip
    through between the check and the count; a correct password takes its own attempt back (`succeeded`).
    Memory is bounded: at most `max_keys` names/addresses are tracked (expired ones go first, then the oldest).
    """

    def __init__(self, per_name: int = 5, per_address: int = 50, window: float = 300.0, max_keys: int = 10_000):
        self.per_name, self.per_address, self.window, self.max_keys = per_name, per_address, window, max_keys
        self.hits: OrderedDict[str, deque] = OrderedDict()
        self.lock = threading.Lock()

    def _keys(self, name: str | None, address: str) -> list[tuple[str, int]]:
        """name None: a syntactically invalid name (never looked up nor hashed) counts for the address only."""
        keys = [("a:" + address[:64], self.per_address)]
        return keys if name is None else [("n:" + name[:64], self.per_name), *keys]

    def _live(self, key: str, now: float) -> deque | None:
        q = self.hits.get(key)
        if q is not None:
            while q and q[0] <= now - self.window:
                q.popleft()
        return q

    def begin(self, name: str | None, address: str) -> bool:
        """Count one attempt; False (and nothing counted) when the name or the address is at its limit."""
        now = time.monotonic()
        with self.lock:
            keys = self._keys(name, address)
            for key, limit in keys:
                q = self._live(key, now)
                if q is not None and len(q) >= limit:
                    return False
            for key, _ in keys:
                self.hits.setdefault(key, deque()).append(now)
                self.hits.move_to_end(key)
            if len(self.hits) > self.max_keys:
                self._shrink(now)
            return True

    def succeeded(self, name: str | None, address: str) -> None:
        """The attempt had the right password: it is not a failure (the name's earlier failures stay)."""
        with self.lock:
            for key, _ in self._keys(name, address):
                q = self.hits.get(key)
                if q:
                    q.pop()

    def blocked(self, name: str | None, address: str = "") -> bool:
        """Read-only: whether the next attempt would be refused (adds no key)."""
        now = time.monotonic()
        with self.lock:
            return any((q := self._live(key, now)) is not None and len(q) >= limit
                       for key, limit in self._keys(name, address))

    def _shrink(self, now: float) -> None:
        for key in [k for k, q in self.hits.items() if not q or q[-1] <= now - self.window]:
            del self.hits[key]
        while len(self.hits) > self.max_keys:
            self.hits.popitem(last=False)


def request_token(request: Request) -> str | None:
    """The session token of a request: `Authorization: Bearer …` first, else the session cookie."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.cookies.get(COOKIE) or None


class Sessions:
    """token → user, looked up in the store and cached for `ttl` seconds (the UI sends many requests).

    A session ended in this server (logout) leaves the cache at once; one ended by another process (a password
    reset with `collect users add`) stops working here within `ttl` seconds.
    """

    def __init__(self, store, ttl: float = 5.0, max_entries: int = 10_000):
        self.store, self.ttl, self.max_entries = store, ttl, max_entries
        self.cache: dict[str, tuple[float, dict | None]] = {}
        self.lock = threading.Lock()

    def user(self, request: Request) -> dict | None:
        token = request_token(request)
        if not token or len(token) > 256:
            return None
        now = time.monotonic()
        with self.lock:
            hit = self.cache.get(token)
        if hit and hit[0] > now:
            return hit[1]
        user = self.store.session_user(token)
        with self.lock:
            if len(self.cache) >= self.max_entries:
                self.cache.clear()
            self.cache[token] = (now + self.ttl, user)
        return user

    def cached(self, request: Request) -> bool:
        token = request_token(request)
        with self.lock:
            hit = self.cache.get(token or "")
        return bool(hit and hit[0] > time.monotonic())

    def forget(self, token: str | None) -> None:
        with self.lock:
            self.cache.pop(token or "", None)


def same_origin(headers: Headers) -> bool:
    """Whether a request comes from this app's own pages, or from a non-browser client (no Origin at all)."""
    site = headers.get("sec-fetch-site")  # set by the browser itself; a page's script cannot forge it
    if site in ("cross-site", "same-site"):  # same-site: another port or subdomain, still another origin
        return False
    if site in ("same-origin", "none"):  # none: typed or bookmarked by the user
        return True
    origin = headers.get("origin") or headers.get("referer")
    if origin is None:
        return True
    if origin == "null":
        return False
    netloc = urlsplit(origin).netloc.lower()
    hosts = {h.strip().lower() for h in (headers.get("host", ""), headers.get("x-forwarded-host", "")) if h}
    return netloc in hosts


class _TooLarge(Exception):
    pass


class Guard:
    """The ASGI guard described in the module docstring; `sessions` is the server's Sessions."""

    def __init__(self, app, sessions: Sessions, max_body: int = MAX_BODY, max_hashes: int = 50_000):
        self.app, self.sessions, self.max_body, self.max_hashes = app, sessions, max_body, max_hashes
        self.owners: OrderedDict[str, str] = OrderedDict()  # Gradio session_hash → user name
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        method, path = scope["method"], scope["path"]
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _answer(send, scope, 413, f"request body over {self.max_body} bytes")
        if method not in SAFE_METHODS and not same_origin(headers):
            return await _answer(send, scope, 403, "cross-origin request refused")
        needs_user = path.startswith("/api/") and path not in ("/api/v1/login", "/api/v1/logout")
        gradio = path.startswith("/ui/gradio_api/")
        if path.startswith(DIRECT_CALLS):
            return await _answer(send, scope, 403, "direct Gradio calls are not served; the UI uses the queue")
        user = None
        if needs_user or gradio:
            request = Request(scope)
            user = (self.sessions.user(request) if self.sessions.cached(request)
                    else await run_in_threadpool(self.sessions.user, request))
            if user is None and needs_user:
                return await _answer(send, scope, 401, "log in first")
        received, started, refused = 0, False, False

        async def tracking_send(message):
            nonlocal started
            if refused:  # our 413 went out: whatever the app answers to the cut-off body is dropped
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def limited():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    if not started and not refused:
                        await _answer(send, scope, 413, f"request body over {self.max_body} bytes")
                    refused = True
                    raise _TooLarge()
            return message

        downstream = limited
        if gradio and user is not None:
            hashes = _hashes_in(path, scope.get("query_string", b""))
            if method == "POST" and "json" in headers.get("content-type", ""):
                try:
                    body = await _read_all(limited)
                except _TooLarge:
                    return
                hashes += _hashes_in_body(body)
                downstream = _replay(body, receive)
            if not self._claim(hashes, user["name"]):
                return await _answer(send, scope, 403, "this session_hash belongs to another user")
        try:
            await self.app(scope, downstream, tracking_send)
        except _TooLarge:  # raised out of the app's body read: the 413 is already sent
            pass

    def _claim(self, hashes: list[str], user: str) -> bool:
        with self.lock:
            for h in hashes:
                owner = self.owners.get(h)
                if owner is not None and owner != user:
                    return False
            for h in hashes:
                self.owners[h] = user
                self.owners.move_to_end(h)
            while len(self.owners) > self.max_hashes:
                self.owners.popitem(last=False)
        return True


def _hashes_in(path: str, query: bytes) -> list[str]:
    found = parse_qs(query.decode("latin-1")).get("session_hash", [])
    parts = path.split("/")
    for marker in ("heartbeat", "stream"):  # /ui/gradio_api/heartbeat/{hash}, /ui/gradio_api/stream/{hash}/…
        if marker in parts and parts.index(marker) + 1 < len(parts):
            found.append(parts[parts.index(marker) + 1])
    return found


def _hashes_in_body(body: bytes) -> list[str]:
    try:
        data = json.loads(body)
    except ValueError:
        return []
    value = data.get("session_hash") if isinstance(data, dict) else None
    return [value] if isinstance(value, str) else []


async def _read_all(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """A receive() that hands the already read body once, then waits on the real one (for the disconnect)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _answer(send, scope, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=status)(scope, _no_body, send)


async def _no_body():
    return {"type": "http.request", "body": b"", "more_body": False}
