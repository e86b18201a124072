"""The OpenAPI document told the truth about this server's limits.

The request models are module-level pydantic classes, so their bounds are the widest any server
could accept (``max_new_tokens <= 2^31``); the live server refuses more (its ``max_new_tokens``
setting, 512 by default). Clients and fuzzers that read the schema then send requests the
server rejects. ``live_schema`` takes FastAPI's document and writes each limit the settings
impose, and the engine's strict bounds (``top_p > 0``, ``min_p < 1``), into the fields they
bound. What JSON Schema cannot say (a prompt's length in tokens, ``n <= num_beams`` for beams)
stays a 422 naming the field and the setting.
"""

from __future__ import annotations

from typing import Any

from service.completion_plan import MAX_STOP as MAX_COMPLETION_STOP
from service.routes.generate import MAX_STOP as MAX_GENERATE_STOP
from service.settings import Settings


def _branch(prop: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The part of a property's schema of JSON type ``kind`` (the property itself, or one
    branch of its ``anyOf``, as pydantic writes ``X | None``)."""
    for part in [prop, *prop.get("anyOf", ())]:
        if part.get("type") == kind:
            return part
    return None


def _bound(schema: dict[str, Any], model: str, field: str, kind: str, **bounds: Any) -> None:
    prop = schema["components"]["schemas"].get(model, {}).get("properties", {}).get(field)
    part = None if prop is None else _branch(prop, kind)
    if part is not None:
        part.update(bounds)
        if "exclusiveMinimum" in bounds:
            part.pop("minimum", None)
        if "exclusiveMaximum" in bounds:
            part.pop("maximum", None)


def live_schema(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """``schema`` with the live limits written in (changed in place and returned)."""
    beams = min(settings.max_num_beams, settings.max_batch_rows)
    sequences = min(settings.max_return_sequences, settings.max_batch_rows)
    non_empty = {"minLength": 1}
    _bound(schema, "GenerateRequest", "max_new_tokens", "integer", maximum=settings.max_new_tokens)
    _bound(schema, "GenerateRequest", "num_beams", "integer", maximum=beams)
    _bound(schema, "GenerateRequest", "num_return_sequences", "integer", maximum=sequences)
    _bound(schema, "GenerateRequest", "prompts", "array", minItems=1, maxItems=settings.max_prompts)
    _bound(schema, "GenerateRequest", "top_p", "number", exclusiveMinimum=0)
    _bound(schema, "GenerateRequest", "min_p", "number", exclusiveMaximum=1)
    _bound(schema, "GenerateRequest", "stop", "array", maxItems=MAX_GENERATE_STOP, items={"type": "string", **non_empty})
    _bound(schema, "GenerateRequest", "stop", "string", **non_empty)
    _bound(schema, "CompletionRequest", "max_tokens", "integer", maximum=settings.max_new_tokens)
    _bound(schema, "CompletionRequest", "n", "integer", maximum=sequences)
    _bound(schema, "CompletionRequest", "best_of", "integer", maximum=beams)
    _bound(schema, "CompletionRequest", "top_p", "number", exclusiveMinimum=0)
    _bound(schema, "CompletionRequest", "stop", "array", maxItems=MAX_COMPLETION_STOP,
           items={"type": "string", **non_empty})
    _bound(schema, "CompletionRequest", "stop", "string", **non_empty)
    _bound(schema, "PerplexityRequest", "texts", "array", minItems=1, maxItems=settings.max_prompts)
    for model, one, many in (("GenerateRequest", "prompt", "prompts"), ("PerplexityRequest", "text", "texts")):
        body = schema["components"]["schemas"].get(model)
        if body is not None:  # exactly one of the two (null counts as absent)
            body["oneOf"] = [{"required": [a], "properties": {a: {"not": {"type": "null"}}, b: {"type": "null"}}}
                             for a, b in ((one, many), (many, one))]
    return schema
