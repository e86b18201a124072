"""``/health`` (the process is up), ``/ready`` (it can serve) and ``/metrics`` (Prometheus).

``/health`` is on its own router, ``public``, which ``service.app`` includes without the API key
(it is in ``service.deps.PUBLIC_PATHS``); ``/ready`` and ``/metrics`` need the key like the API.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import RegistryDep, SettingsDep, not_ready
from service.errors import ERROR_RESPONSES
from service.schemas.models import Health, Ready

router = APIRouter(tags=["operations"])
public = APIRouter(tags=["operations"])


@public.get("/health", response_model=Health, openapi_extra={"security": []})
async def health() -> Health:
    """Liveness: answers as long as the process serves HTTP; never needs the API key."""
    return Health()


@router.get("/ready", response_model=Ready, responses={401: ERROR_RESPONSES[401], 503: ERROR_RESPONSES[503]})
async def ready(registry: RegistryDep, settings: SettingsDep) -> Ready:
    """Readiness: 200 once at least one model is loaded and every decode worker is running."""
    if not registry.ready:
        raise not_ready(settings, "no model is loaded" if not registry.models else "a decode worker is not running")
    return Ready(models=sorted(registry.models))


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, 401: ERROR_RESPONSES[401]},
)
async def metrics(request: Request) -> Response:
    """Prometheus text format: requests, latency, tokens, queue depth and batch size."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
