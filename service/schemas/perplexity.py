"""Bodies of ``POST /v1/perplexity``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.schemas.common import INT32, ModelName, RequestBody


class PerplexityRequest(RequestBody):
    """Score one text (``text``) or several (``texts``)."""

    model: ModelName
    text: str | None = Field(None, description="one text (give this or texts)")
    texts: list[str] | None = Field(None, description="several texts")
    stride: int | None = Field(
        None, ge=1, le=INT32, description="sliding-window stride for texts longer than the model's context"
    )
    token_logprobs: bool = Field(False, description="also return each token's log-probability")

    model_config = {"json_schema_extra": {"examples": [{"text": "To be, or not to be", "token_logprobs": True}]}}


class PerplexityResult(BaseModel):
    index: int
    tokens: int = Field(description="tokens scored")
    characters: int
    nll: float | None = Field(description="total negative log-likelihood of the text's tokens (nats)")
    nll_per_token: float | None = Field(description="nll / tokens: the mean, as a training loss reports it")
    perplexity: float | None = Field(description="exp(nll_per_token); null when it overflows")
    bits_per_char: float | None
    token_logprobs: list[float | None] | None = None


class PerplexityUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class PerplexityResponse(BaseModel):
    id: str
    object: Literal["perplexity"] = "perplexity"
    created: int
    model: str
    results: list[PerplexityResult]
    usage: PerplexityUsage
