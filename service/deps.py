"""Dependencies shared by the routes: the API key, the model registry and model lookup."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import APIError
from service.registry import ModelRegistry, ServedModel
from service.settings import Settings, get_settings

DOCS_ASSETS = "/docs/assets"
"""Where the docs pages' JavaScript, CSS and icon are served (``service.routes.docs``)."""
PUBLIC_PATHS = frozenset({"/health", "/", "/docs", "/redoc", "/openapi.json"})
"""Reachable without the API key: liveness, so orchestrators can probe it; the playground page
(``/``), which holds no data and asks the visitor for the key it then sends with its API calls;
and the API's documentation (the pages, their files under ``DOCS_ASSETS``, the schema), which
describes the API and holds no data -- a browser could not send a key with the pages' own
requests, so behind the key they would not work at all. ``service.app`` includes the routers of
these paths without ``require_api_key``."""


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(DOCS_ASSETS + "/")

bearer = HTTPBearer(auto_error=False, scheme_name="bearer", description="the server's LMFORGE_API_KEY")
"""The scheme as OpenAPI declares it (``components.securitySchemes.bearer``): every operation that
depends on it gets ``security: [{"bearer": []}]``, so generated clients and fuzzers send the key."""


def check_api_key(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    """Refuse (401) a request without the right key, when the server has one.

    The scheme must be written ``Bearer`` as documented (``bearer`` or ``Basic`` is refused) and the
    key is compared in constant time (``hmac.compare_digest``), so response timing does not leak it.
    Headers are never logged, so neither is the key.
    """
    key = request.app.state.settings.api_key
    if key is None:
        return
    if credentials is not None and credentials.scheme == "Bearer" and hmac.compare_digest(
        credentials.credentials.encode("latin-1"), key.get_secret_value().encode()
    ):
        return
    request.app.state.metrics.rejected.labels("unauthorized").inc()
    given = request.headers.get("authorization")
    message = "invalid API key" if given else "missing API key (send Authorization: Bearer <key>)"
    raise APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """The dependency every router but the public ones is included with (when a key is set)."""
    check_api_key(request, credentials)


async def authenticate(request: Request) -> None:
    """``require_api_key`` outside a route: for the errors raised before a route's dependencies run
    (no such route, wrong method, an unreadable body), so that a request without the key learns no
    more than a 401 from them. Public paths pass."""
    if not is_public(request.url.path):
        check_api_key(request, await bearer(request))


def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def not_ready(settings: Settings, message: str = "no model is loaded yet") -> APIError:
    return APIError(503, message, code="not_ready", headers={"Retry-After": str(settings.retry_after_s)})


def resolve_model(registry: ModelRegistry, name: str | None, settings: Settings) -> ServedModel:
    """The loaded model called ``name``; the name is a dict key, never a path.

    ``name`` may be omitted when exactly one model is loaded.
    """
    models = registry.models
    if not models:
        raise not_ready(settings)
    if name is None:
        if len(models) == 1:
            return next(iter(models.values()))
        raise APIError(
            422, f"model is required when several models are loaded: {', '.join(sorted(models))}", param="model",
            code="model_required",
        )
    served = models.get(name)
    if served is None:
        raise APIError(
            404, f"model {name!r} is not loaded; available: {', '.join(sorted(models))}", param="model",
            code="model_not_found",
        )
    if not served.scheduler.alive:
        raise not_ready(settings, f"model {name!r} is not running")
    return served


def request_id(request: Request) -> str:
    """The id the context middleware gave this request (echoed as X-Request-ID)."""
    return request.state.request_id


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
