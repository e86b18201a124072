"""The application factory: ``create_app(settings)`` wires settings, models, routes and middleware.

Nothing happens at import time; models load in the ``lifespan`` (on a worker thread, so a slow
load never stalls the loop) and their decode workers stop when the server shuts down.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import Response

from service.errors import install_error_handlers
from service.generation import ClientGone
from service.metrics import Metrics
from service.middleware import (
    PUBLIC_PATHS,
    AuthMiddleware,
    BodyLimitMiddleware,
    RequestContextMiddleware,
)
from service.registry import ModelRegistry
from service.routes import completions, generate, health, models, perplexity, playground
from service.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """\
Generation (greedy, sampling, beam search), streaming, perplexity scoring and an
OpenAI-compatible completions endpoint for lmforge checkpoints.

Every error has the body `{"error": {"message", "type", "param", "code"}}`; `param` names the
field at fault. With `LMFORGE_API_KEY` set, every route but `/health` and the playground page
(`GET /`, which asks for the key itself) needs `Authorization: Bearer <key>`.
"""


def document_auth(app: FastAPI) -> None:
    """Declare the bearer scheme in the OpenAPI schema: generated clients and fuzzers then send it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http", "scheme": "bearer", "description": "the server's LMFORGE_API_KEY",
        }
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                operation["security"] = [] if path in PUBLIC_PATHS else [{"bearer": []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    settings: Settings | None = None,
    *,
    loader: Callable[[ModelRegistry], None] | None = None,
) -> FastAPI:
    """Build the app. ``loader`` fills the registry at startup (default: load the checkpoints
    named by ``settings``); tests pass their own to serve in-memory pipelines."""
    settings = settings or Settings()
    metrics = Metrics()
    registry = ModelRegistry(settings, metrics)
    load = loader or ModelRegistry.load_all

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(load, registry)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(registry.stop)

    app = FastAPI(
        title="lmforge",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    install_error_handlers(app)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, exc: ClientGone) -> Response:
        request.state.log["disconnected"] = True
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    for module in (generate, completions, perplexity, models, health, playground):
        app.include_router(module.router)

    if settings.api_key is not None:
        document_auth(app)
    # Added innermost first: context (outermost) -> auth -> body limit -> routes.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=metrics)
    if settings.api_key is not None:
        app.add_middleware(AuthMiddleware, api_key=settings.api_key.get_secret_value(), metrics=metrics)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
