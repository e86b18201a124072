"""Bodies of ``POST /v1/completions``: the subset of OpenAI's legacy completions API we honour.

Parameters OpenAI defines but this server cannot honour are accepted only at their neutral
value (e.g. ``presence_penalty: 0``) so a client that sends defaults works and one that relies
on them gets a clear 422 instead of silently different behaviour.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.schemas.common import INT32, MAX_SEED, ModelName, RequestBody, Usage
from service.schemas.generate import LogitBias

Prompt = str | list[str] | list[int] | list[list[int]]


class StreamOptions(RequestBody):
    include_usage: bool = Field(False, description="send a last chunk with usage before [DONE]")


class CompletionRequest(RequestBody):
    model: ModelName
    prompt: Prompt = Field(description="a string, a list of strings, or token ids (a list, or a list of lists)")
    max_tokens: int | None = Field(16, ge=0, le=INT32, description="tokens to generate (null: the server's limit; "
                                                                  "left out: 16, or the limit if lower)")
    temperature: float | None = Field(1.0, ge=0, le=2, description="0 decodes greedily")
    top_p: float | None = Field(1.0, ge=0, le=1)
    n: int | None = Field(1, ge=1, le=INT32, description="completions per prompt")
    best_of: int | None = Field(None, ge=1, le=INT32, description="equal to n, or with use_beam_search the beam width")
    stop: str | list[str] | None = Field(None, description="up to 4 stop strings")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    logprobs: int | None = Field(None, ge=0, le=5, description="return each token's log-probability and, in "
                                 "top_logprobs, the k most likely tokens at its position (and the chosen one)")
    echo: bool | None = Field(False, description="prepend the prompt to the completion")
    stream: bool | None = Field(False, description="Server-Sent Events, ending with data: [DONE]")
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(0.0, ge=0, le=0, description="only 0 is supported")
    frequency_penalty: float | None = Field(0.0, ge=0, le=0, description="only 0 is supported")
    user: str | None = Field(None, max_length=256, description="ignored")
    logit_bias: LogitBias = None
    use_beam_search: bool = Field(False, description="lmforge extension (as vLLM's): beam search with best_of beams "
                                                     "(default max(n, 4), 4 kept within the server's max_num_beams), the n best returned, best first")
    length_penalty: float = Field(1.0, description="with use_beam_search: score / length**length_penalty")
    early_stopping: bool = Field(True, description="with use_beam_search: stop once enough beams are finished")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"model": "shakespeare-char", "prompt": "ROMEO:", "max_tokens": 32, "temperature": 0},
                {"model": "shakespeare-char", "prompt": ["ROMEO:", "JULIET:"], "max_tokens": 16, "n": 2, "seed": 7},
            ]
        }
    }


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(BaseModel):
    """Also the shape of each streamed chunk (with ``finish_reason`` null until the end)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
