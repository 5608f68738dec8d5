"""The HTTP server: login, sessions, the JSON API and the Gradio UI on one FastAPI app.

Routes (everything but /login, /healthz and static assets needs a session):

    GET  /login, POST /login         form login → HttpOnly session cookie (SameSite=Lax; Secure over TLS or
                                     when served beyond loopback)
    GET  /logout (a button), POST /logout, POST /api/v1/logout   end the session of the cookie or bearer token
    POST /api/v1/login               {"username", "password"} → {"token"}; send it as `Authorization: Bearer …`
    GET  /api/v1/next                the caller's reserved item (or a new reservation) → {"item", "progress"}
    POST /api/v1/votes               {"assignment_id", "choice", "idempotency_key", "strength"?, "rationale"?,
                                     "ideal"?} → {"vote_id", "replay", "next"}; 409 when the queue refuses
    POST /api/v1/undo                → {"item"}: the undone item, reserved again for the caller
    GET  /api/v1/progress
    GET  /api/v1/admin/stats         admins only (403 otherwise)
    GET  /api/v1/admin/export        admins only: pairs JSONL (query: min_votes, min_agreement, edited_as_chosen)
    /ui/                             the Gradio app (collect.app), same sessions, same Store calls

Sessions live in the store (sha256 of the token), so they survive a server restart. `collect.security`
guards every request first (body size, cross-origin posts, 401 before parsing, Gradio session ownership).
"""

from __future__ import annotations

import json
import threading

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from pydantic import BaseModel, Field, field_validator

from collect.auth import is_text, valid_name
from collect.security import COOKIE, Guard, Sessions, Throttle, request_token
from collect.store import MAX_ID, Conflict, Store

LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>alignkit collect · log in</title>
<style>body{font-family:system-ui,sans-serif;max-width:22em;margin:10vh auto}input,button{width:100%;
margin:.3em 0;padding:.5em;font-size:1em}.err{color:#b00}</style></head><body>
<h2>alignkit collect</h2>{error}<form method="post" action="/login">
<input name="username" id="username" placeholder="user" autocomplete="username" maxlength="64" required autofocus>
<input name="password" id="password" type="password" placeholder="password" autocomplete="current-password"
 maxlength="1024" required>
<button type="submit" id="login">Log in</button></form></body></html>"""


LOGOUT_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>alignkit collect · log out</title></head>
<body><form method="post" action="/logout"><button type="submit" id="logout">Log out</button></form></body></html>"""


def _text_ok(value):
    if value is not None and not is_text(value):
        raise ValueError("not valid Unicode text (lone surrogate)")
    return value


class VoteIn(BaseModel):
    assignment_id: int = Field(ge=1, le=MAX_ID)
    choice: str = Field(max_length=16)
    idempotency_key: str = Field(min_length=1, max_length=128)
    strength: str | None = Field(default=None, max_length=16)
    rationale: str = Field(default="", max_length=20_000)
    ideal: str = Field(default="", max_length=50_000)

    _text = field_validator("choice", "idempotency_key", "strength", "rationale", "ideal")(_text_ok)


class LoginIn(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)

    _text = field_validator("username", "password")(_text_ok)


def _import_statistics() -> None:
    import scipy.stats  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import statsmodels.stats.inter_rater  # noqa: F401


def create_app(store: Store, guidelines: str = "", generator: str = "", export_rules=None,
               secure_cookies: bool = False, throttle: Throttle | None = None) -> FastAPI:
    """FastAPI app with login, the JSON API and the Gradio UI mounted at /ui.

    `secure_cookies`: mark the session cookie Secure (serve does when bound beyond loopback); it is also Secure
    on any request that came over https (directly or as X-Forwarded-Proto from a TLS proxy).
    """
    import gradio as gr
    from starlette.middleware.cors import CORSMiddleware

    from collect import app as ui
    from collect.agreement import summarize
    from collect.export import ExportRules, build

    api = FastAPI(title="alignkit collect", docs_url=None, redoc_url=None, openapi_url=None)
    sessions, throttle = Sessions(store), throttle or Throttle()
    # The statistics import scikit-learn, statsmodels and scipy on first use (5-10 s on 2 busy cores): import
    # them now, beside the server, so the first admin's stats do not wait for it.
    threading.Thread(target=_import_statistics, name="collect-stats-import", daemon=True).start()
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
        response.headers.setdefault("Referrer-Policy", "same-origin")  # "no-referrer" makes form posts Origin: null
        return response

    @api.exception_handler(Conflict)
    async def conflict(_request: Request, exc: Conflict):
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @api.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        # Where and what, never the input itself (a 1 MB field is not echoed back)
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:200]} for e in exc.errors()[:10]]
        return JSONResponse({"detail": errors}, status_code=422)

    @api.get("/healthz")
    def healthz():
        return {"ok": True}

    @api.get("/")
    def root(request: Request):
        return RedirectResponse("/ui/" if sessions.user(request) else "/login", status_code=303)

    @api.get("/login", response_class=HTMLResponse)
    def login_form():
        return LOGIN_PAGE.replace("{error}", "")

    def _login(request: Request, name: str, password: str) -> str | None:
        address = request.client.host if request.client else "?"
        key = name if valid_name(name) else None  # an invalid name is never looked up: it counts per address
        # Counted before the hash check: 20 parallel guesses get 5 checks, not 20
        if not throttle.begin(key, address):
            raise HTTPException(429, "too many failed logins; wait a few minutes")
        if not valid_name(name) or not is_text(password) or len(password) > 1024:
            return None  # the attempt stays counted; no lookup, no hash
        with login_slots:  # argon2 takes 64 MiB and ~0.3 s of a core per check: a login burst must not starve votes
            token = store.login(name, password)
        if token is not None:
            throttle.succeeded(key, address)
        return token

    def _set_cookie(request: Request, response, token: str) -> None:
        tls = request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"
        response.set_cookie(COOKIE, token, httponly=True, samesite="lax", max_age=12 * 3600, path="/",
                            secure=secure_cookies or tls)

    def _logout(request: Request) -> bool:
        token = request_token(request)
        ended = bool(token) and store.logout(token)
        sessions.forget(token)
        return ended

    @api.post("/login")
    def login_submit(request: Request, username: str = Form(..., max_length=64),
                     password: str = Form(..., max_length=1024)):
        token = _login(request, username.strip(), password)
        if token is None:
            page = LOGIN_PAGE.replace("{error}", '<p class="err" id="login-error">Wrong user name or password.</p>')
            return HTMLResponse(page, status_code=401)
        response = RedirectResponse("/ui/", status_code=303)
        _set_cookie(request, response, token)
        return response

    @api.get("/logout", response_class=HTMLResponse)
    def logout_form():
        return LOGOUT_PAGE  # a GET changes nothing: a link on another site cannot log anyone out

    @api.post("/logout")
    def logout(request: Request):
        _logout(request)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @api.post("/api/v1/logout")
    def api_logout(request: Request):
        ended = _logout(request)
        response = JSONResponse({"ended": ended})
        response.delete_cookie(COOKIE, path="/")
        return response

    @api.post("/api/v1/login")
    def api_login(request: Request, body: LoginIn):
        token = _login(request, body.username.strip(), body.password)
        if token is None:
            raise HTTPException(401, "wrong user name or password")
        response = JSONResponse({"token": token})
        _set_cookie(request, response, token)
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
    def api_export(min_votes: int | None = Query(None, ge=0, le=1_000_000),
                   min_agreement: float | None = Query(None, ge=0, le=1),
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
    # CORS closed: no origin allowed. A CORSMiddleware on the parent app also turns Gradio's own off (it would
    # echo any loopback Origin, or any Origin at all for a non-loopback Host, with credentials allowed).
    api.add_middleware(CORSMiddleware, allow_origins=[], allow_credentials=False)
    api.add_middleware(Guard, sessions=sessions)  # added last: runs first
    return api

