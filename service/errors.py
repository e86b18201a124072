"""One JSON error shape for every failure, OpenAI style, so clients parse a single format.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` for 4xx and 5xx alike,
including FastAPI's own validation errors (rewritten to name the offending field) and
Starlette's 404/405 for unknown routes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    """The OpenAI-style ``type`` for a status code."""
    if status in _TYPES:
        return _TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


class APIError(Exception):
    """An error the client should see as-is: status, message and the field to blame."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.status, exc.message, exc.param, exc.code), status_code=exc.status, headers=exc.headers
    )


def _loc_parts(loc: tuple[Any, ...]) -> list[Any]:
    """The field path of an error location, without ``body`` and union-member tags (``str``)."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    return [p for p in parts if not (isinstance(p, str) and ("[" in p or p in {"str", "int", "float", "bool"}))]


def _param(parts: list[Any]) -> str | None:
    """``["stop", 2]`` -> ``"stop[2]"``."""
    if not parts:
        return None
    out = str(parts[0])
    for p in parts[1:]:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def validation_message(exc: RequestValidationError) -> tuple[str, str | None, str]:
    """A one-line message naming the field, the field itself, and an error code.

    A value that matches no member of a union yields one error per member; the deepest one
    (``stop[0]: Input should be a valid string``) is the most specific, so it is reported.
    """
    errors = exc.errors()
    if not errors:
        return "invalid request", None, "invalid_request"
    if any(e.get("type") == "json_invalid" for e in errors):
        return "request body is not valid JSON", None, "invalid_json"
    first = max(errors, key=lambda e: len(_loc_parts(tuple(e.get("loc", ())))))
    kind = str(first.get("type", "invalid"))
    param = _param(_loc_parts(tuple(first.get("loc", ()))))
    if kind == "extra_forbidden":
        return f"unknown field {param!r}", param, "unknown_field"
    if kind == "missing" and param is None:
        return "request body is required", None, "missing"
    msg = str(first.get("msg", "invalid value"))
    fields = {_param(_loc_parts(tuple(e.get("loc", ())))) for e in errors}
    roots = {f.split("[")[0].split(".")[0] for f in fields if f}
    more = f" (and errors in {len(roots) - 1} more field(s))" if len(roots) > 1 else ""
    return (f"{param}: {msg}" if param else msg) + more, param, kind


def body_too_large(limit: int) -> APIError:
    """The 413 for a body over ``max_body_bytes`` (declared or counted while it streams in)."""
    return APIError(413, f"request body is larger than the limit of {limit} bytes (max_body_bytes)",
                    code="body_too_large", headers={"Connection": "close"})


Gate = Callable[[Request], Awaitable[None]]
"""Awaited before the errors FastAPI raises ahead of a route's dependencies; raises an ``APIError``
to answer with that instead (``service.deps.authenticate``: no route or bad JSON without the key is
a 401, as every other request without it)."""


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param, code = validation_message(exc)
    status = 400 if code == "invalid_json" else 422
    return JSONResponse(error_body(status, message, param, code), status_code=status)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own HTTP errors (404, 405, 400, the body limit's 413) in our shape."""
    if exc.status_code == 413:  # FastAPI's max_body_size: the body grew past the limit while read
        request.app.state.metrics.rejected.labels("body_too_large").inc()
        return error_response(body_too_large(request.app.state.settings.max_body_bytes))
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404:
        message = f"no route {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return JSONResponse(
        error_body(exc.status_code, message), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body(500, "internal server error", code="internal_error"), status_code=500)


def _gated(handler: Callable[[Request, Any], Awaitable[JSONResponse]], gate: Gate) -> Callable[..., Any]:
    async def gated(request: Request, exc: Any) -> JSONResponse:
        try:
            await gate(request)
        except APIError as refused:
            return error_response(refused)
        return await handler(request, exc)

    return gated


def install_error_handlers(app: FastAPI, *, gate: Gate | None = None) -> None:
    """Every failure in the one shape; with ``gate``, it is asked first about the failures that
    come before a route's dependencies (unknown route or method, a body that does not parse)."""
    http_error, validation_error = _http_error, _validation_error
    if gate is not None:
        http_error, validation_error = _gated(_http_error, gate), _gated(_validation_error, gate)
    app.add_exception_handler(APIError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, _unhandled)


def _response(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _response("malformed request (invalid JSON or text encoding)"),
    401: _response("missing or wrong API key"),
    404: _response("unknown model"),
    413: _response("request body too large"),
    422: _response("invalid field or over a limit; `param` names the field"),
    429: _response("queue full; retry after Retry-After seconds"),
    503: _response("not ready (no model loaded, or shutting down)"),
    504: _response("request timed out"),
}
"""The error responses every model route documents (OpenAPI and schema-based fuzzing rely on it)."""

JSON_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": r["description"],
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for status, r in ERROR_RESPONSES.items()
}
"""``ERROR_RESPONSES`` for a route whose response class is not JSON (``EventSourceResponse``):
FastAPI documents a response ``model`` under the route's own media type, but errors are JSON
whatever the route streams. (``ErrorBody`` is in the schema's components through the routes that
use ``ERROR_RESPONSES``.)"""
