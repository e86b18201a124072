"""Bodies of ``POST /v1/generate`` and ``POST /v1/generate/stream``."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from lm.decoding.params import GenerationParams
from service.schemas.common import INT32, MAX_SEED, ModelName, RequestBody, Usage

_D: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(GenerationParams)}
"""Defaults come from the engine so the documented defaults can never drift from the real ones."""

Strategy = Literal["greedy", "sample", "beam"]
FinishReason = Literal["length", "stop", "eos", "banned"]
"""``banned``: no token was left to choose (``no_repeat_ngram_size`` had banned them all)."""
StopStrings = str | list[str] | None
LogitBias = Annotated[
    dict[str, float] | None,
    Field(None, description="token id (a string, as in OpenAI's API) -> a number in [-100, 100] "
                                          "added to its logit; -100 all but bans it, 100 all but forces it"),
]


class DecodingOptions(RequestBody):
    """Every option of the decoding engine (``lm.decoding.generate.GenerationParams``)."""

    strategy: Strategy = Field(_D["strategy"], description="greedy, sample (temperature/top-k/top-p) or beam search")
    max_new_tokens: int | None = Field(
        None, ge=0, le=INT32,
        description=f"tokens to generate per sequence (null: {_D['max_new_tokens']}, or the server's limit if lower)",
    )
    temperature: float = Field(_D["temperature"], ge=0, description="sample: softmax temperature")
    top_k: int = Field(_D["top_k"], ge=0, le=INT32, description="sample: keep the k most likely tokens (0 = all)")
    top_p: float = Field(_D["top_p"], ge=0, le=1, description="sample: nucleus probability mass")
    min_p: float = Field(_D["min_p"], ge=0, le=1, description="sample: drop tokens below min_p x the top probability")
    repetition_penalty: float = Field(_D["repetition_penalty"], gt=0, description="divide logits of seen tokens")
    seed: int | None = Field(_D["seed"], ge=0, le=MAX_SEED, description="sample: per-request seed for reproducibility")
    num_beams: int = Field(_D["num_beams"], ge=1, le=INT32, description="beam: beam width")
    length_penalty: float = Field(_D["length_penalty"], description="beam: score / length**length_penalty")
    early_stopping: bool = Field(_D["early_stopping"], description="beam: stop once enough beams are finished")
    num_return_sequences: int = Field(
        _D["num_return_sequences"], ge=1, le=INT32, description="sample/beam: sequences returned per prompt"
    )
    no_repeat_ngram_size: int = Field(_D["no_repeat_ngram_size"], ge=0, le=INT32, description="beam: ban repeated n-grams")
    stop: StopStrings = Field(None, description="stop string(s); the text ends before the first match")
    stop_at_eos: bool = Field(_D["stop_at_eos"], description="end a sequence at the end-of-sequence token")
    logit_bias: LogitBias = None
    suppress_tokens: list[int] | None = Field(
        None, description="token ids never chosen (e.g. ptb-word's <unk>, id 1; see GET /tokenizer_info)"
    )


class GenerateRequest(DecodingOptions):
    """Generate from one prompt (``prompt``) or several (``prompts``)."""

    model: ModelName
    prompt: str | None = Field(None, description="one prompt (give this or prompts)")
    prompts: list[str] | None = Field(None, description="several prompts, decoded in one batch")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"prompt": "ROMEO:", "strategy": "greedy", "max_new_tokens": 32},
                {"prompts": ["ROMEO:", "JULIET:"], "strategy": "sample", "temperature": 0.8, "top_p": 0.95, "seed": 1},
                {"prompt": "ROMEO:", "strategy": "beam", "num_beams": 4, "num_return_sequences": 2},
            ]
        }
    }


class GenerateChoice(BaseModel):
    prompt_index: int = Field(description="which prompt this continues")
    index: int = Field(description="which sequence for that prompt (beam: best first)")
    text: str
    token_ids: list[int]
    tokens: list[str] = Field(description="the text of each generated token")
    logprobs: list[float | None] = Field(description="log-probability of each generated token")
    cumulative_logprob: float | None
    finish_reason: FinishReason


class GenerateResponse(BaseModel):
    id: str
    object: Literal["generation"] = "generation"
    created: int
    model: str
    choices: list[GenerateChoice]
    usage: Usage


class TokenData(BaseModel):
    """``event: token``: one text delta. ``token_id`` and ``logprob`` are null only for text held
    back to the end of a sequence that stopped with no token to carry it (``banned``)."""

    prompt_index: int
    index: int
    text: str
    token_id: int | None
    logprob: float | None


class FinishData(BaseModel):
    """``event: finish``: one sequence is complete."""

    prompt_index: int
    index: int
    text: str
    finish_reason: FinishReason
    usage: Usage


class DoneData(BaseModel):
    """``event: done``: the last event of the stream."""

    id: str
    model: str
    usage: Usage
