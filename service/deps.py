"""Dependencies shared by the routes: the model registry and model lookup."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.errors import APIError
from service.registry import ModelRegistry, ServedModel
from service.settings import Settings, get_settings


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
