"""The HTTP server: login, sessions, the JSON API and the Gradio UI on one FastAPI app.

Routes (everything but /login, /healthz and static assets needs a session):

    GET  /login, POST /login         form login → HttpOnly session cookie (SameSite=Lax)
    GET  /logout
    POST /api/v1/login               {"username", "password"} → {"token"}; send it as `Authorization: Bearer …`
    GET  /api/v1/next                the caller's reserved item (or a new reservation) → {"item", "progress"}
    POST /api/v1/votes               {"assignment_id", "choice", "idempotency_key", "strength"?, "rationale"?,
                                     "ideal"?} → {"vote_id", "replay", "next"}; 409 when the queue refuses
    POST /api/v1/undo                → {"item"}: the undone item, reserved again for the caller
    GET  /api/v1/progress
    GET  /api/v1/admin/stats         admins only (403 otherwise)
    GET  /api/v1/admin/export        admins only: pairs JSONL (query: min_votes, min_agreement, edited_as_chosen)
    /ui/                             the Gradio app (collect.app), same sessions, same Store calls

Sessions live in the store (sha256 of the token), so they survive a server restart.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from pydantic import BaseModel, Field

from collect.store import Conflict, Store

COOKIE = "alignkit_session"
LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>alignkit collect · log in</title>
<style>body{font-family:system-ui,sans-serif;max-width:22em;margin:10vh auto}input,button{width:100%;
margin:.3em 0;padding:.5em;font-size:1em}.err{color:#b00}</style></head><body>
<h2>alignkit collect</h2>{error}<form method="post" action="/login">
<input name="username" id="username" placeholder="user" autocomplete="username" required autofocus>
<input name="password" id="password" type="password" placeholder="password" autocomplete="current-password" required>
<button type="submit" id="login">Log in</button></form></body></html>"""


class VoteIn(BaseModel):
    assignment_id: int
    choice: str
    idempotency_key: str = Field(min_length=1, max_length=128)
    strength: str | None = None
    rationale: str = Field(default="", max_length=20_000)
    ideal: str = Field(default="", max_length=50_000)


class LoginIn(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class _Throttle:
    """At most `limit` failed logins per user name per `window` seconds: argon2 alone slows, this stops."""

    def __init__(self, limit: int = 5, window: float = 300.0):
        self.limit, self.window = limit, window
        self.failures: dict[str, deque] = defaultdict(deque)
        self.lock = threading.Lock()

    def blocked(self, name: str) -> bool:
        with self.lock:
            q = self.failures[name]
            while q and q[0] < time.time() - self.window:
                q.popleft()
            return len(q) >= self.limit

    def fail(self, name: str) -> None:
        with self.lock:
            self.failures[name].append(time.time())


class _Sessions:
    """token → user, looked up in the store and cached for a few seconds (the UI sends many requests)."""

    def __init__(self, store: Store, ttl: float = 5.0):
        self.store, self.ttl = store, ttl
        self.cache: dict[str, tuple[float, dict | None]] = {}
        self.lock = threading.Lock()

    def user(self, request: Request) -> dict | None:
        token = request.cookies.get(COOKIE)
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        if not token:
            return None
        now = time.monotonic()
        with self.lock:
            hit = self.cache.get(token)
        if hit and hit[0] > now:
            return hit[1]
        user = self.store.session_user(token)
        with self.lock:
            if len(self.cache) > 10_000:
                self.cache.clear()
            self.cache[token] = (now + self.ttl, user)
        return user

    def forget(self, token: str | None) -> None:
        with self.lock:
            self.cache.pop(token or "", None)


def create_app(store: Store, guidelines: str = "", generator: str = "", export_rules=None) -> FastAPI:
    """FastAPI app with login, the JSON API and the Gradio UI mounted at /ui."""
    import gradio as gr

    from collect import app as ui
    from collect.agreement import summarize
    from collect.export import ExportRules, build

    api = FastAPI(title="alignkit collect", docs_url=None, redoc_url=None, openapi_url=None)
    sessions, throttle = _Sessions(store), _Throttle()
    login_slots = threading.BoundedSemaphore(2)
    default_rules = export_rules or ExportRules()

    def need_user(request: Request) -> dict:
        user = sessions.user(request)
        if user is None:
            raise HTTPException(401, "log in first")
        return user

    def need_admin(user: dict = Depends(need_user)) -> dict:
        if user["role"] != "admin":
            raise HTTPException(403, "admins only")
        return user

    @api.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if path.startswith("/ui") and request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            if sessions.user(request) is None:
                return RedirectResponse("/login", status_code=303)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @api.exception_handler(Conflict)
    async def conflict(_request: Request, exc: Conflict):
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @api.get("/healthz")
    def healthz():
        return {"ok": True}

    @api.get("/")
    def root(request: Request):
        return RedirectResponse("/ui/" if sessions.user(request) else "/login", status_code=303)

    @api.get("/login", response_class=HTMLResponse)
    def login_form():
        return LOGIN_PAGE.replace("{error}", "")

    def _login(name: str, password: str) -> str | None:
        if throttle.blocked(name):
            raise HTTPException(429, "too many failed logins; wait a few minutes")
        with login_slots:  # argon2 takes 64 MiB and ~0.3 s of a core per check: a login burst must not starve votes
            token = store.login(name, password)
        if token is None:
            throttle.fail(name)
        return token

    def _set_cookie(response, token: str) -> None:
        response.set_cookie(COOKIE, token, httponly=True, samesite="lax", max_age=12 * 3600, path="/")

    @api.post("/login")
    def login_submit(username: str = Form(...), password: str = Form(...)):
        token = _login(username.strip(), password)
        if token is None:
            page = LOGIN_PAGE.replace("{error}", '<p class="err" id="login-error">Wrong user name or password.</p>')
            return HTMLResponse(page, status_code=401)
        response = RedirectResponse("/ui/", status_code=303)
        _set_cookie(response, token)
        return response

    @api.get("/logout")
    def logout(request: Request):
        token = request.cookies.get(COOKIE)
        if token:
            store.logout(token)
            sessions.forget(token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @api.post("/api/v1/login")
    def api_login(body: LoginIn):
        token = _login(body.username.strip(), body.password)
        if token is None:
            raise HTTPException(401, "wrong user name or password")
        response = JSONResponse({"token": token})
        _set_cookie(response, token)
        return response

    @api.get("/api/v1/next")
    def api_next(user: dict = Depends(need_user)):
        shown = store.next_item(user["name"])
        return {"item": shown.as_dict() if shown else None, "progress": store.progress(user["name"])}

    @api.post("/api/v1/votes")
    def api_vote(body: VoteIn, user: dict = Depends(need_user)):
        r = store.submit(user["name"], body.assignment_id, body.choice, body.idempotency_key, body.strength,
                         body.rationale, body.ideal)
        return {"vote_id": r.vote_id, "replay": r.replay, "next": r.next.as_dict() if r.next else None}

    @api.post("/api/v1/undo")
    def api_undo(user: dict = Depends(need_user)):
        shown = store.undo(user["name"])
        return {"item": shown.as_dict() if shown else None}

    @api.get("/api/v1/progress")
    def api_progress(user: dict = Depends(need_user)):
        return store.progress(user["name"])

    @api.get("/api/v1/admin/stats")
    def api_stats(_admin: dict = Depends(need_admin)):
        return JSONResponse(json.loads(json.dumps(summarize(store.dump(), store.overlap), default=list)))

    @api.get("/api/v1/admin/export")
    def api_export(min_votes: int | None = None, min_agreement: float | None = None,
                   edited_as_chosen: bool | None = None, admin: dict = Depends(need_admin)):
        rules = ExportRules(
            min_votes=default_rules.min_votes if min_votes is None else min_votes,
            min_agreement=default_rules.min_agreement if min_agreement is None else min_agreement,
            edited_as_chosen=default_rules.edited_as_chosen if edited_as_chosen is None else edited_as_chosen)
        result = build(store.dump(), rules)
        with store.write() as s:
            store.audit(s, admin["name"], "export", via="http", pairs=len(result["pairs"]), rules=rules.__dict__)
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result["pairs"])
        return PlainTextResponse(body, media_type="application/jsonl",
                                 headers={"Content-Disposition": 'attachment; filename="pairs.jsonl"'})

    def gradio_user(request: Request) -> str | None:
        user = sessions.user(request)
        return user["name"] if user else None

    blocks = ui.build(store, guidelines or "", generator)
    blocks.queue(default_concurrency_limit=None)
    gr.mount_gradio_app(api, blocks, path="/ui", auth_dependency=gradio_user, footer_links=[],
                        run_history=False, head=ui.HEAD, css=ui.CSS, show_error=True, ssr_mode=False)
    return api

