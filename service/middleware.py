"""Pure ASGI middlewares: request context (id, metrics, one log line) and the declared body size.

Pure ASGI rather than ``BaseHTTPMiddleware`` so that streamed responses pass through untouched
and the latency covers the last byte of an SSE stream, not just its headers. The API key is a
dependency (``service.deps.require_api_key``); the body limit is FastAPI's (``service.app``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import APIError, body_too_large, error_response
from service.metrics import Metrics

access_log = logging.getLogger("lmforge.access")

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_BYTES = REQUEST_ID_HEADER.encode()
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def route_label(scope: Scope) -> str:
    """The route template (``/v1/generate``), never the raw path, so metric labels stay few."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    app = scope.get("app")
    paths = {getattr(r, "path", None) for r in getattr(app, "routes", ())}
    return scope["path"] if scope["path"] in paths else "unmatched"


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""The methods counted by name; any other string a client sends is ``other``."""


def metric_labels(scope: Scope, status: int, route: str) -> tuple[str, str]:
    """``(route, method)`` labels from fixed sets, so no client can mint new series: the route
    template or ``unmatched``, a standard method or ``other``; a request refused for its API
    key is one series (``unauthenticated``) whatever it asked for, so a flood without the key
    costs nothing in ``/metrics``."""
    if status == 401:
        return "unauthenticated", "other"
    method = scope["method"]
    return route, method if method in METHODS else "other"


class RequestContextMiddleware:
    """Give each request an id, then count it, time it and log one structured line when done.

    Handlers add fields to the line through ``request.state.log`` (a dict: model, token counts,
    and the prompt only when ``log_prompts`` is on). Headers are never logged, so neither is
    the API key.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = (_header(scope, _REQUEST_ID_BYTES) or b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["log"] = {}
        start = time.perf_counter()
        status = 500
        finished = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_REQUEST_ID_BYTES, request_id.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = route_label(scope)
            label, method = metric_labels(scope, status, route)
            self.metrics.requests.labels(label, method, str(status)).inc()
            if status != 401:
                self.metrics.latency.labels(label).observe(elapsed)
            line = {
                "request_id": request_id,
                "method": scope["method"],
                "route": route,
                "status": status,
                "latency_ms": round(elapsed * 1000, 1),
                **state.get("log", {}),
            }
            if not finished:
                line["incomplete"] = True
            access_log.info(json.dumps(line, ensure_ascii=False, default=str))


class DeclaredBodyLimit:
    """Answer 413 in our error shape, before routing, when Content-Length is over ``max_bytes``.

    The routers carry FastAPI's own limit (``include_router(max_body_size=...)``), which counts a
    body as it streams in and raises a 413 ``HTTPException`` that ``service.errors`` renders as
    ours. A *declared* length over the limit it handles differently: Starlette's limiter then
    replaces whatever response the app starts with its own plain-text "Content Too Large", so that
    case is answered here, before any limiter sees the request. (That is also why the limit is set
    on the routers and not as ``FastAPI(max_body_size=...)``: the app-wide limiter wraps the
    middlewares too, and would replace this answer as well.) Like the library's limit, it applies
    to every method.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = _header(scope, b"content-length") if scope["type"] == "http" else None
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            self.metrics.rejected.labels("body_too_large").inc()
            await error_response(body_too_large(self.max_bytes))(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyTimeout:
    """Answer 408 when a request body stops arriving for ``timeout_s`` seconds.

    uvicorn bounds connections (``limit_concurrency``) and idle keep-alive, but not how long a
    client may take to send the body it announced: 200 connections dribbling a byte now and then
    would each hold a slot, and a worker's time, indefinitely. Only receives before the body is
    complete are timed; afterwards ``receive`` is how a streaming response learns that its client
    left, and must wait as long as the stream runs. On a timeout the 408 is sent here (the app
    then sees the client as gone and anything it still sends is dropped).
    """

    def __init__(self, app: ASGIApp, timeout_s: float, metrics: Metrics) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False
        started = False
        answered = False

        async def timed_receive() -> Message:
            nonlocal body_done, answered
            if body_done or answered:
                return await receive()
            try:
                async with asyncio.timeout(self.timeout_s):  # no Task per receive, unlike wait_for
                    message = await receive()
            except TimeoutError:
                if not started:
                    answered = True
                    self.metrics.rejected.labels("body_timeout").inc()
                    err = APIError(408, f"request body not received within {self.timeout_s:g} s (body_timeout_s)",
                                   code="body_timeout", headers={"Connection": "close"})
                    await error_response(err)(scope, receive, send)
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the 408 went out; what the app still sends has no one to go to
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, timed_receive, guarded_send)
