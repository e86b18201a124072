"""Pieces shared by every request and response body."""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

INT32 = 2**31 - 1
MAX_SEED = 2**53 - 1
"""The largest seed: JSON's largest exact integer (a JSON Schema maximum of 2^63 - 1 reads as a
float, 2^63, and admits seeds above it)."""

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
    """Strict: unknown fields, wrong types and non-finite numbers are 422s naming the field --
    except that a number with no fractional part (``1.0``) is an integer, as JSON Schema says."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data: Any) -> Any:  # noqa: ANN401 -- whatever JSON the client sent
        if not isinstance(data, dict):
            return data
        integers = _integer_fields(cls)
        return {name: _integral(value) if name in integers else value for name, value in data.items()}


@functools.cache
def _integer_fields(cls: type[BaseModel]) -> frozenset[str]:
    """The fields of ``cls`` whose type has no float in it (read once per class, not per request)."""
    return frozenset(name for name, info in cls.model_fields.items() if not _mentions_float(info.annotation))


def _mentions_float(annotation: Any) -> bool:  # noqa: ANN401
    return annotation is float or any(_mentions_float(a) for a in get_args(annotation))


def _integral(value: Any) -> Any:  # noqa: ANN401
    """``1.0`` -> ``1``, in lists too (token ids); anything else as it is."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


def finite(x: float | None) -> float | None:
    """JSON has no infinity or NaN: such values are sent as null."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)
