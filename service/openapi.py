"""The OpenAPI document tells the truth about this server: what it allows, it accepts.

The request models are module-level pydantic classes, so their bounds are the widest any server
could accept (``max_new_tokens <= 2^31``); the live server refuses more (its ``max_new_tokens``
setting, 512 by default) and knows only the models it loaded. ``live_schema`` takes FastAPI's
document and writes in each limit the settings impose, the engine's strict bounds (``top_p >
0``, ``min_p < 1``), the loaded models (``model`` is one of their names; examples name one),
their vocabularies (token ids, ``logit_bias`` keys) and context (``stride``), the one-of rules
(``prompt`` or ``prompts``) and the relations between fields (beam search returns at most
``num_beams`` sequences; ``best_of`` is ``n`` unless beams are asked for), enumerated per beam
width. What JSON Schema cannot say -- a text's length in tokens, which depends on its content --
is in the field's description and stays a 422 naming the setting.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from service.completion_plan import DEFAULT_BEAMS, DEFAULT_MAX_TOKENS
from service.completion_plan import MAX_STOP as MAX_COMPLETION_STOP
from service.registry import ServedModel
from service.routes.generate import MAX_STOP as MAX_GENERATE_STOP
from service.settings import Settings


def _branch(prop: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The part of a property's schema of JSON type ``kind`` (the property itself, or one
    branch of its ``anyOf``, as pydantic writes ``X | None``)."""
    for part in [prop, *prop.get("anyOf", ())]:
        if part.get("type") == kind:
            return part
    return None


def _prop(schema: dict[str, Any], model: str, field: str) -> dict[str, Any] | None:
    """The schema of body ``model``'s property ``field`` (None if there is none)."""
    return schema["components"]["schemas"].get(model, {}).get("properties", {}).get(field)


def _default(schema: dict[str, Any], model: str, field: str, value: Any) -> None:  # noqa: ANN401
    """Document the default the server uses (a default kept within the server's limit)."""
    prop = _prop(schema, model, field)
    if prop is not None:
        prop["default"] = value


def _bound(schema: dict[str, Any], model: str, field: str, kind: str, **bounds: Any) -> None:
    prop = _prop(schema, model, field)
    part = None if prop is None else _branch(prop, kind)
    if part is not None:
        part.update(bounds)
        if "exclusiveMinimum" in bounds:
            part.pop("minimum", None)
        if "exclusiveMaximum" in bounds:
            part.pop("maximum", None)


@dataclass(frozen=True)
class ModelFacts:
    """What the schema needs to know of the loaded models."""

    names: tuple[str, ...] = ()
    vocab_size: int | None = None
    """The smallest vocabulary: an id below it is valid for every model."""
    context: int | None = None
    """The shortest Transformer context (the largest ``stride`` every model takes); None: none."""

    @classmethod
    def of(cls, models: Iterable[ServedModel]) -> ModelFacts:
        models = list(models)
        contexts = [m.pipeline.context.max_length for m in models if m.pipeline.context.max_length is not None]
        return cls(tuple(sorted(m.name for m in models)), min((m.vocab_size for m in models), default=None),
                   min(contexts, default=None))


def number_below(n: int) -> str:
    """A regular expression for the decimal integers in ``[0, n)``, without leading zeros
    (``logit_bias`` keys are token ids written as strings)."""
    top = str(n - 1)
    if len(top) == 1:
        return f"^[0-{top}]$"
    parts = [f"[1-9][0-9]{{{k - 1}}}" if k > 1 else "[0-9]" for k in range(1, len(top))]
    for i, digit in enumerate(top):  # numbers of len(top) digits that first fall below top at digit i
        low = 1 if i == 0 else 0
        if int(digit) > low:
            rest = len(top) - i - 1
            parts.append(f"{top[:i]}[{low}-{int(digit) - 1}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    parts.append(top)
    return "^(" + "|".join(parts) + ")$"


def _beam_rules(strategy_field: str | None, width: str, count: str, beams: int, default_width: int) -> dict[str, Any]:
    """``count <= width`` when beam search runs (JSON Schema has no relations between fields, so
    one branch per width, and one for the width's default when it is left out)."""
    branches: list[dict[str, Any]] = [
        {"properties": {width: {"const": b}, count: {"maximum": b}}, "required": [width]} for b in range(1, beams + 1)
    ]
    branches.append({"not": {"required": [width]}, "properties": {count: {"maximum": default_width}}})
    branches.append({"properties": {width: {"type": "null"}, count: {"maximum": default_width}}, "required": [width]})
    if strategy_field is not None:  # only beam search ties them
        branches.append({"not": {"properties": {strategy_field: {"const": "beam"}}, "required": [strategy_field]}})
    return {"anyOf": branches}


def live_schema(schema: dict[str, Any], settings: Settings, models: ModelFacts | None = None) -> dict[str, Any]:
    """``schema`` with the live limits and models written in (changed in place and returned)."""
    beams, sequences = settings.beam_limit, settings.sequence_limit
    non_empty = {"minLength": 1}
    _bound(schema, "GenerateRequest", "max_new_tokens", "integer", maximum=settings.max_new_tokens)
    _bound(schema, "GenerateRequest", "num_beams", "integer", maximum=beams)
    _default(schema, "GenerateRequest", "num_beams", min(DEFAULT_BEAMS, beams))
    _bound(schema, "GenerateRequest", "num_return_sequences", "integer", maximum=sequences)
    _bound(schema, "GenerateRequest", "prompts", "array", minItems=1, maxItems=settings.max_prompts)
    _bound(schema, "GenerateRequest", "top_p", "number", exclusiveMinimum=0)
    _bound(schema, "GenerateRequest", "min_p", "number", exclusiveMaximum=1)
    _bound(schema, "GenerateRequest", "stop", "array", maxItems=MAX_GENERATE_STOP, items={"type": "string", **non_empty})
    _bound(schema, "GenerateRequest", "stop", "string", **non_empty)
    _bound(schema, "CompletionRequest", "max_tokens", "integer", maximum=settings.max_new_tokens)
    _default(schema, "CompletionRequest", "max_tokens", min(DEFAULT_MAX_TOKENS, settings.max_new_tokens))
    _bound(schema, "CompletionRequest", "n", "integer", maximum=sequences)
    _bound(schema, "CompletionRequest", "best_of", "integer", maximum=beams)
    _bound(schema, "CompletionRequest", "top_p", "number", exclusiveMinimum=0)
    _bound(schema, "CompletionRequest", "stop", "array", maxItems=MAX_COMPLETION_STOP,
           items={"type": "string", **non_empty})
    _bound(schema, "CompletionRequest", "stop", "string", **non_empty)
    _bound(schema, "ChatRequest", "max_tokens", "integer", maximum=settings.max_new_tokens)
    _bound(schema, "ChatRequest", "max_completion_tokens", "integer", maximum=settings.max_new_tokens)
    _bound(schema, "ChatRequest", "n", "integer", maximum=sequences)
    _bound(schema, "ChatRequest", "top_p", "number", exclusiveMinimum=0)
    _bound(schema, "ChatRequest", "stop", "array", maxItems=MAX_COMPLETION_STOP, items={"type": "string", **non_empty})
    _bound(schema, "ChatRequest", "stop", "string", **non_empty)
    for branch in (_prop(schema, "CompletionRequest", "prompt") or {}).get("anyOf", []):  # several prompts, or one prompt's token ids
        if branch.get("type") == "array":
            items = branch.get("items", {})
            single = items.get("type") == "integer"
            branch.update(minItems=1, maxItems=settings.max_prompt_tokens if single else settings.max_prompts)
            if items.get("type") == "array":  # several prompts of token ids: each one bounded too
                items.update(maxItems=settings.max_prompt_tokens)
    _bound(schema, "PerplexityRequest", "texts", "array", minItems=1, maxItems=settings.max_prompts)
    for model, one, many in (("GenerateRequest", "prompt", "prompts"), ("PerplexityRequest", "text", "texts")):
        body = schema["components"]["schemas"].get(model)
        if body is not None:  # exactly one of the two (null counts as absent)
            body["oneOf"] = [{"required": [a], "properties": {a: {"not": {"type": "null"}}, b: {"type": "null"}}}
                             for a, b in ((one, many), (many, one))]
    _relations(schema, settings)
    if models is not None and models.names:
        _models(schema, models)
    return schema


def _relations(schema: dict[str, Any], settings: Settings) -> None:
    """Beam search's ``n <= num_beams``, and completions' ``best_of``: ``n`` itself, or with
    ``use_beam_search`` a width of at least ``n`` (by default ``max(n, 4)``, within the limits)."""
    beams = settings.beam_limit
    bodies = schema["components"]["schemas"]
    generate = bodies.get("GenerateRequest")
    if generate is not None:
        rules = _beam_rules("strategy", "num_beams", "num_return_sequences", beams, min(DEFAULT_BEAMS, beams))
        generate["allOf"] = [*generate.get("allOf", []), rules]
    completion = bodies.get("CompletionRequest")
    if completion is not None:
        sequences = settings.sequence_limit
        plain = [{"properties": {"best_of": {"const": n}, "n": {"const": n}}, "required": ["best_of", "n"]}
                 for n in range(1, min(sequences, beams) + 1)]
        plain.append({"properties": {"best_of": {"const": 1}}, "not": {"required": ["n"]}, "required": ["best_of"]})
        plain.append({"properties": {"best_of": {"const": 1}, "n": {"type": "null"}}, "required": ["best_of", "n"]})
        plain.append({"not": {"required": ["best_of"]}})
        plain.append({"properties": {"best_of": {"type": "null"}}, "required": ["best_of"]})
        no_beams = {"anyOf": [{"not": {"required": ["use_beam_search"]}},
                              {"properties": {"use_beam_search": {"const": False}}}]}
        beam = _beam_rules(None, "best_of", "n", beams, beams)  # no best_of: max(n, 4), kept within the limit
        completion["allOf"] = [*completion.get("allOf", []), {"anyOf": [
            {"allOf": [no_beams, {"anyOf": plain}]},
            {"allOf": [{"properties": {"use_beam_search": {"const": True}}, "required": ["use_beam_search"]}, beam]},
        ]}]


def _models(schema: dict[str, Any], models: ModelFacts) -> None:
    """``model`` is a loaded model's name (optional only when one is loaded); examples name the
    first; token ids are below the smallest vocabulary; ``stride`` fits the shortest context."""
    bodies = schema["components"]["schemas"]
    names = list(models.names)
    for body in bodies.values():
        prop = body.get("properties", {}).get("model")
        if prop is not None:
            prop.pop("examples", None)
            prop["anyOf"] = [{"type": "string", "enum": names}] + ([{"type": "null"}] if len(names) == 1 else [])
            if len(names) > 1:
                body["required"] = sorted({*body.get("required", []), "model"})
        for example in body.get("examples", []):
            if isinstance(example, dict) and ("model" in example or len(names) > 1):
                example["model"] = names[0]
    for path in schema.get("paths", {}).values():  # the query parameter of GET /tokenizer_info
        for operation in path.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if parameter.get("name") == "model":
                    parameter["schema"] = {"anyOf": [{"type": "string", "enum": names}, {"type": "null"}]}
    if models.vocab_size:
        token = {"type": "integer", "minimum": 0, "maximum": models.vocab_size - 1}
        _bound(schema, "GenerateRequest", "suppress_tokens", "array", items=token)
        _bound(schema, "DetokenizeRequest", "tokens", "array", items=token)
        prompt = bodies.get("CompletionRequest", {}).get("properties", {}).get("prompt", {})
        for branch in prompt.get("anyOf", []):
            items = branch.get("items", {})
            if items.get("type") == "integer":
                branch["items"] = token
            elif items.get("type") == "array":
                items["items"] = token
        for model in ("GenerateRequest", "CompletionRequest", "ChatRequest"):
            _bound(schema, model, "logit_bias", "object", propertyNames={"pattern": number_below(models.vocab_size)},
                   additionalProperties={"type": "number", "minimum": -100, "maximum": 100})
    if models.context is not None:
        _bound(schema, "PerplexityRequest", "stride", "integer", maximum=models.context)
