"""Pieces shared by every request and response body."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

INT32 = 2**31 - 1
INT63 = 2**63 - 1

ModelName = Annotated[
    str | None,
    Field(
        None,
        max_length=256,
        description="a name from GET /v1/models; optional when exactly one model is loaded",
        examples=["shakespeare-char"],
    ),
]


class RequestBody(BaseModel):
    """Strict: unknown fields, wrong types and non-finite numbers are 422s naming the field."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


def finite(x: float | None) -> float | None:
    """JSON has no infinity or NaN: such values are sent as null."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)
