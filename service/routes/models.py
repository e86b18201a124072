"""``GET /v1/models``: what is loaded, in OpenAI's list shape plus each model's config."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import RegistryDep
from service.errors import ERROR_RESPONSES
from service.schemas.models import ModelCard, ModelList

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList, responses={401: ERROR_RESPONSES[401]})
async def list_models(registry: RegistryDep) -> ModelList:
    """The loaded models (an empty list while none is loaded)."""
    default = registry.default_model
    return ModelList(data=[ModelCard(**m.card(), default=m.name == default) for m in registry.models.values()])
