"""The OpenAI-compatible HTTP API: /v1/chat/completions (streaming and not), /v1/models, /v1/feedback,
/metrics (Prometheus text), /health.

Every answer names the run that wrote it (`x-alignkit-run` header, `alignkit.run` in the body) and carries
a response id; it is stored in the collect store before the client sees it, so feedback on it always
finds it. Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with 4xx codes for
everything a client can cause.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import uuid
from collections import defaultdict, deque

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from alignkit import feedback as production
from alignkit.errors import UserError
from alignkit.refusal import classify
from serve.engine import FINISH, Job
from serve.keys import KeyRing
from serve.routing import NothingPromoted, Router, UnknownModel

ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers or {}


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is answered 413 before the app reads or parses it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _raw_error(send, 413, f"request body over {self.limit} bytes")
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, f"request body over {self.limit} bytes")
            return message

        try:
            await self.app(scope, limited, send)
        except ApiError as e:
            await _raw_error(send, e.status, e.message)


async def _raw_error(send, status: int, message: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": status}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RateLimit:
    """Requests per API key in a sliding minute."""

    def __init__(self, per_minute: int):
        self.per_minute, self._seen = per_minute, defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            seen = self._seen[key]
            while seen and now - seen[0] > 60:
                seen.popleft()
            if len(seen) >= self.per_minute:
                retry = max(1, math.ceil(60 - (now - seen[0])))
                raise ApiError(429, f"rate limit: {self.per_minute} requests per minute for this key",
                               kind="rate_limit_error", headers={"Retry-After": str(retry)})
            seen.append(now)


class Metrics:
    """Prometheus counters and histograms per run and variant (a registry of its own per app)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = ("model", "run", "variant")
        self.requests = Counter("alignkit_requests", "Chat completions answered", labels, registry=self.registry)
        self.errors = Counter("alignkit_request_errors", "Requests answered with an error", ("status",),
                              registry=self.registry)
        self.latency = Histogram("alignkit_request_seconds", "Time to the last token", labels, registry=self.registry,
                                 buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64))
        self.tokens = Counter("alignkit_completion_tokens", "Generated tokens", labels, registry=self.registry)
        self.thumbs = Counter("alignkit_feedback", "Thumbs on answers", ("run", "variant", "rating"),
                              registry=self.registry)
        self.sampled = Counter("alignkit_refusal_sampled", "Answers labelled by the refusal detector", labels,
                               registry=self.registry)
        self.refused = Counter("alignkit_refusals", "Sampled answers the detector calls refusals", labels,
                               registry=self.registry)
        self.swaps = Gauge("alignkit_swaps", "Adapter swaps since start", registry=self.registry)
        self.batch = Gauge("alignkit_mean_batch", "Rows per decode step (mean): requests sharing each forward pass", registry=self.registry)


def _str(body: dict, key: str, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"'{key}' must be a non-empty string", key)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"'{key}' holds a lone surrogate (not valid UTF-8)", key) from None
    return value


def parse_chat(body, server_cfg) -> dict:
    """Validate a chat completion request; one ApiError naming the field otherwise."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    model = _str(body, "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content}", "messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ApiError(400, f"messages[{i}]: expected {{'role': one of {'/'.join(ROLES)}, 'content': a string}}",
                           f"messages[{i}]")
        _str({"content": m["content"] or " "}, "content")
        clean.append({"role": m["role"], "content": m["content"]})
    if clean[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's", "messages")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", server_cfg.default_max_tokens))
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= server_cfg.max_tokens:
        raise ApiError(400, f"'max_tokens' must be an integer in 1..{server_cfg.max_tokens}", "max_tokens")
    temperature = body.get("temperature", 0.0)
    top_p = body.get("top_p", 1.0)
    for name, value, hi in (("temperature", temperature, 2.0), ("top_p", top_p, 1.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= hi or \
                (name == "top_p" and value == 0):
            raise ApiError(400, f"'{name}' must be a number in {'(0' if name == 'top_p' else '[0'}, {hi}]", name)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", "stream")
    return {"model": model, "messages": clean, "max_tokens": max_tokens, "temperature": float(temperature),
            "top_p": float(top_p), "stream": stream, "user": _str(body, "user", required=False)}


def create_app(recipe, runs_dir: str, engine, feedback_engine=None):
    """The FastAPI app over an engine, following `runs_dir`'s registry."""
    cfg = recipe.server
    router = Router(runs_dir, engine, recipe.ab.runs, recipe.ab.split)
    keyring, limiter, metrics = KeyRing(runs_dir), RateLimit(cfg.rate_limit_per_minute), Metrics()
    context_length = cfg.context_length or engine.context_length
    stop = threading.Event()
    answered = {"n": 0}
    app = FastAPI(title="alignkit serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.router, app.state.stop, app.state.metrics = router, stop, metrics
    router.watch(cfg.watch_interval_s, stop)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        metrics.errors.labels(str(e.status)).inc()
        return JSONResponse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.status}},
                            status_code=e.status, headers=e.headers)

    def authorize(request) -> str:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        name = keyring.name_of(token) if token else None
        if name is None:
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer …; `alignkit serve keys add NAME "
                                f"--runs {runs_dir}` makes one)", kind="authentication_error",
                           headers={"WWW-Authenticate": "Bearer"})
        limiter.check(name)
        return name

    async def json_body(request) -> object:
        raw = await request.body()
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON ({str(e)[:80]})") from None

    @app.get("/health")
    async def health():
        return {"ok": True, "serving": router.current, "swaps": router.swaps}

    @app.get("/v1/models")
    async def list_models(request: Request):
        authorize(request)
        now = int(time.time())
        data = [{"id": router.name, "object": "model", "created": now, "owned_by": "alignkit",
                 "alignkit": {"pipeline": True, "promoted": router.current, "ab": router.ab or None,
                              "message": None if router.current or router.ab else
                              f"nothing promoted yet: alignkit runs --dir {runs_dir} promote RUN_ID"}}]
        data += [{"id": rid, "object": "model", "created": now, "owned_by": "alignkit", "alignkit": {"pipeline": False}}
                 for rid in router.names()[1:]]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        key_name = authorize(request)
        req = parse_chat(await json_body(request), cfg)
        prompt_tokens = engine.prompt_tokens(req["messages"])
        if prompt_tokens + req["max_tokens"] > context_length:
            raise ApiError(400, f"the conversation is {prompt_tokens} tokens; with max_tokens={req['max_tokens']} "
                                f"it exceeds the context length {context_length}", "messages",
                           kind="context_length_exceeded")
        user = req["user"] or key_name
        try:
            route = await asyncio.to_thread(router.acquire, req["model"], user)
        except UnknownModel as e:
            raise ApiError(404, f"model '{req['model']}' does not exist; served: {', '.join(e.names)}", "model",
                           kind="not_found_error") from None
        except NothingPromoted:
            raise ApiError(503, f"nothing is promoted in {runs_dir} yet: run `alignkit runs --dir {runs_dir} promote "
                                "RUN_ID` (the server picks it up within a second)", kind="service_unavailable") from None
        loop, pieces = asyncio.get_running_loop(), asyncio.Queue()
        job = Job(req["messages"], route.run_id, req["max_tokens"], req["temperature"], req["top_p"],
                  emit=lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece))
        started, rid = time.time(), f"chatcmpl-{uuid.uuid4().hex}"
        engine.submit(job)
        labels = (req["model"], route.run_id, route.variant or "")
        meta = {"run": route.run_id, "variant": route.variant, "response_id": rid}
        headers = {"x-alignkit-run": route.run_id, "x-alignkit-response-id": rid}

        async def finish() -> dict:
            result = job.result
            if "error" in result:
                raise ApiError(500, f"generation failed: {result['error']}", kind="server_error")
            latency = time.time() - started
            refused = None
            answered["n"] += 1
            if answered["n"] % recipe.feedback.refusal_sample_every == 0:
                refused = int(classify(result["text"], req["messages"][-1]["content"]).refusal)
                metrics.sampled.labels(*labels).inc()
                metrics.refused.labels(*labels).inc(refused)
            if feedback_engine is not None:
                await asyncio.to_thread(production.record_response, feedback_engine, id=rid, key_name=key_name,
                                        user=req["user"], model=req["model"], run_id=route.run_id,
                                        variant=route.variant, messages=req["messages"], answer=result["text"],
                                        latency_ms=latency * 1000, completion_tokens=result["completion_tokens"],
                                        refused=refused)
            metrics.requests.labels(*labels).inc()
            metrics.latency.labels(*labels).observe(latency)
            metrics.tokens.labels(*labels).inc(result["completion_tokens"])
            metrics.swaps.set(router.swaps)
            metrics.batch.set(engine.batched_requests / max(engine.batches, 1))
            return result

        usage = lambda r: {"prompt_tokens": prompt_tokens, "completion_tokens": r["completion_tokens"],  # noqa: E731
                           "total_tokens": prompt_tokens + r["completion_tokens"]}
        if not req["stream"]:
            try:
                while await pieces.get() is not FINISH:
                    pass
                result = await finish()
            finally:
                if "finish_reason" not in job.result:
                    job.cancelled = True
            return JSONResponse({"id": rid, "object": "chat.completion", "created": int(started),
                                 "model": req["model"], "choices": [{"index": 0, "finish_reason": result["finish_reason"],
                                 "message": {"role": "assistant", "content": result["text"]}}],
                                 "usage": usage(result), "alignkit": meta}, headers=headers)

        def chunk(delta: dict, finish_reason=None, **extra) -> str:
            body = {"id": rid, "object": "chat.completion.chunk", "created": int(started), "model": req["model"],
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], "alignkit": meta,
                    **extra}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        async def events():
            try:
                yield chunk({"role": "assistant", "content": ""})
                while (piece := await pieces.get()) is not FINISH:
                    yield chunk({"content": piece})
                try:
                    result = await finish()
                except ApiError as e:
                    yield f"data: {json.dumps({'error': {'message': e.message, 'code': e.status}})}\n\n"
                    return
                yield chunk({}, result["finish_reason"], usage=usage(result))
                yield "data: [DONE]\n\n"
            finally:
                if "finish_reason" not in job.result:
                    job.cancelled = True  # the client went away: its row stops at the next token

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    @app.post("/v1/feedback")
    async def post_feedback(request: Request):
        key_name = authorize(request)
        if feedback_engine is None:
            raise ApiError(404, "feedback is off: set feedback.store in the serve recipe", kind="not_found_error")
        body = await json_body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        if "response_ids" in body:
            ids, preferred = body.get("response_ids"), body.get("preferred")
            if not (isinstance(ids, list) and len(ids) == 2 and all(isinstance(i, str) for i in ids)
                    and ids[0] != ids[1]):
                raise ApiError(400, "'response_ids' must be two different response ids", "response_ids")
            if preferred not in ids:
                raise ApiError(400, "'preferred' must be one of 'response_ids'", "preferred")
            other = ids[1] if preferred == ids[0] else ids[0]
            kwargs = {"response_id": preferred, "other_id": other}
        else:
            rating = body.get("rating")
            if rating not in ("up", "down"):
                raise ApiError(400, "'rating' must be 'up' or 'down' (or send response_ids + preferred)", "rating")
            comment = _str(body, "comment", required=False)
            if comment is not None and len(comment) > 4000:
                raise ApiError(400, "'comment' is over 4000 characters", "comment")
            kwargs = {"response_id": _str(body, "response_id"), "rating": rating, "comment": comment}
        key = request.headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= 128:
            raise ApiError(400, "Idempotency-Key must be 1-128 characters", "Idempotency-Key")
        try:
            receipt = await asyncio.to_thread(production.submit, feedback_engine, key_name, key, **kwargs)
        except production.UnknownResponse as e:
            raise ApiError(404, f"no response with id '{e.args[0]}'", "response_id", kind="not_found_error") from None
        except production.Conflict:
            raise ApiError(409, "this Idempotency-Key was used for different feedback", "Idempotency-Key") from None
        except UserError as e:  # two answers to different conversations
            raise ApiError(400, str(e), "response_ids") from None
        if "rating" in kwargs and not receipt["replay"]:
            metrics.thumbs.labels(receipt["run"], receipt["variant"] or "", kwargs["rating"]).inc()
        return receipt

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import generate_latest

        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    return BodyLimit(app, cfg.max_body_bytes), app
