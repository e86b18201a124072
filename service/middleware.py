"""Pure ASGI middlewares: request context (id, metrics, one log line), auth, body size.

Pure ASGI rather than ``BaseHTTPMiddleware`` so that streamed responses pass through untouched
and the latency covers the last byte of an SSE stream, not just its headers.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_body
from service.metrics import Metrics

access_log = logging.getLogger("lmforge.access")

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
PUBLIC_PATHS = frozenset({"/health", "/"})
"""Reachable without the API key: liveness, so orchestrators can probe it, and the playground page
(``/``), which holds no data and asks the visitor for the key it then sends with its API calls.
The docs and the OpenAPI schema need the key too (fetch ``/openapi.json`` with the header)."""


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def route_label(scope: Scope) -> str:
    """The route template (``/v1/generate``), never the raw path, so metric labels stay few."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    app = scope.get("app")
    paths = {getattr(r, "path", None) for r in getattr(app, "routes", ())}
    return scope["path"] if scope["path"] in paths else "unmatched"


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
        given = (_header(scope, REQUEST_ID_HEADER.encode()) or b"").decode("latin-1")
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
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER.encode(), request_id.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            label = route_label(scope)
            self.metrics.requests.labels(label, scope["method"], str(status)).inc()
            self.metrics.latency.labels(label).observe(elapsed)
            line = {
                "request_id": request_id,
                "method": scope["method"],
                "route": label,
                "status": status,
                "latency_ms": round(elapsed * 1000, 1),
                **state.get("log", {}),
            }
            if not finished:
                line["incomplete"] = True
            access_log.info(json.dumps(line, ensure_ascii=False, default=str))


class AuthMiddleware:
    """Require ``Authorization: Bearer <key>`` on every path but ``PUBLIC_PATHS``.

    Runs before the body is read, so an unauthenticated client costs no parsing. The comparison
    is constant-time (``hmac.compare_digest``) so response timing does not leak the key.
    """

    def __init__(self, app: ASGIApp, api_key: str, metrics: Metrics) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"authorization") or b""
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        self.metrics.rejected.labels("unauthorized").inc()
        message = "missing API key (send Authorization: Bearer <key>)" if not given else "invalid API key"
        await _send_json(
            send, 401, error_body(401, message, code="invalid_api_key"), [(b"www-authenticate", b"Bearer")]
        )


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413, by Content-Length and while streaming in.

    The body is read here (it is small by construction) and replayed to the app; a chunked
    upload without Content-Length is cut off as soon as it crosses the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def _too_large(self, send: Send) -> None:
        self.metrics.rejected.labels("body_too_large").inc()
        message = f"request body is larger than the limit of {self.max_bytes} bytes (max_body_bytes)"
        await _send_json(send, 413, error_body(413, message, code="body_too_large"), [(b"connection", b"close")])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                await _send_json(send, 400, error_body(400, "invalid Content-Length", code="bad_request"), [])
                return
            if declared > self.max_bytes:
                await self._too_large(send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
