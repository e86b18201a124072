"""Bodies of ``GET /v1/models``, ``/health`` and ``/ready``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ModelExample(BaseModel):
    prompt: str
    params: dict[str, Any] = Field(description="/v1/generate fields (strategy, temperature, ...)")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    config: dict[str, Any] = Field(description="the checkpoint's model config")
    tokenizer: dict[str, Any]
    device: str
    dtype: str = Field(description="weights precision the server holds the model in (float32, bfloat16, float16)")
    parameters: int
    max_context: int | None = Field(description="longest context (null: recurrent, unbounded)")
    example: ModelExample | None = Field(
        None, description="a prompt from the model's held-out text and the decoding settings that show it at its "
        "best (null for checkpoints written before examples existed)")
    default: bool = Field(False, description="the model the playground opens on (`default_model`, else the first)")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    models: list[str]
