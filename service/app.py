"""The application factory: ``create_app(settings)`` wires settings, models, routes and middleware.

Nothing happens at import time; models load in the ``lifespan`` (on a worker thread, so a slow
load never stalls the loop) and their decode workers stop when the server shuts down.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from service.deps import authenticate, require_api_key
from service.errors import install_error_handlers
from service.generation import ClientGone
from service.metrics import Metrics
from service.middleware import BodyTimeout, DeclaredBodyLimit, RequestContextMiddleware
from service.openapi import ModelFacts, live_schema
from service.registry import ModelRegistry
from service.routes import (
    chat,
    completions,
    docs,
    generate,
    health,
    models,
    perplexity,
    playground,
    tokenize,
)
from service.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """\
Generation (greedy, sampling, beam search), streaming, perplexity scoring and an
OpenAI-compatible completions endpoint for lmforge checkpoints.

Every error has the body `{"error": {"message", "type", "param", "code"}}`; `param` names the
field at fault. With `LMFORGE_API_KEY` set, every route but `/health` and the playground page
(`GET /`, which asks for the key itself) needs `Authorization: Bearer <key>`.
"""


def create_app(
    settings: Settings | None = None,
    *,
    loader: Callable[[ModelRegistry], None] | None = None,
    registry: ModelRegistry | None = None,
) -> FastAPI:
    """Build the app. ``loader`` fills the registry at startup (default: load the checkpoints
    named by ``settings``); tests pass their own to serve in-memory pipelines. A ``registry``
    already loaded (``lmforge serve`` loads before it binds the port, so that nothing to serve
    is an error at once) is served as it is."""
    settings = settings or Settings()
    if registry is None:
        registry = ModelRegistry(settings, Metrics())
        load = loader or ModelRegistry.load_all
    else:
        load = loader or (lambda _: None)
    metrics = registry.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(load, registry)
        if not registry.models:
            log.error("%s; /ready reports 503", registry.why_empty())
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(registry.stop)

    app = FastAPI(
        title="lmforge",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # service.routes.docs serves them, with their files, offline
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    keyed = settings.api_key is not None
    install_error_handlers(app, gate=authenticate if keyed else None)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, exc: ClientGone) -> Response:
        request.state.log["disconnected"] = True
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    # With a key, every router but the public ones (service.deps.PUBLIC_PATHS) requires it; the
    # dependency also puts the bearer scheme and each operation's `security` into the OpenAPI schema.
    private = [Depends(require_api_key)] if keyed else []
    for router, dependencies in (
        (generate.router, private), (completions.router, private), (chat.router, private), (perplexity.router, private),
        (models.router, private), (health.router, private), (tokenize.router, private),
        (health.public, []), (playground.router, []), (docs.router, []),
    ):
        app.include_router(router, dependencies=dependencies, max_body_size=settings.max_body_bytes)
    docs.mount_assets(app)
    build_schema = app.openapi

    built: dict[ModelFacts, dict[str, Any]] = {}
    pristine: list[dict[str, Any]] = []  # FastAPI's own document, built once and never written to

    def openapi() -> dict[str, Any]:  # FastAPI's document, with the live limits and models written in
        if not pristine:
            pristine.append(copy.deepcopy(build_schema()))
        facts = ModelFacts.of(registry.models.values())
        if facts not in built:
            built.clear()
            built[facts] = live_schema(copy.deepcopy(pristine[0]), settings, facts)
        app.openapi_schema = built[facts]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # Added innermost first: context (outermost) -> declared body size -> routes.
    app.add_middleware(BodyTimeout, timeout_s=settings.body_timeout_s, metrics=metrics)
    app.add_middleware(DeclaredBodyLimit, max_bytes=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
