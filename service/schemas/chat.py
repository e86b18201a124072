"""Bodies of ``POST /v1/chat/completions``: OpenAI's chat API over a base model (the messages are
rendered into one prompt by the chat template, ``service.chat``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.schemas.common import INT32, MAX_SEED, ModelName, RequestBody, Usage
from service.schemas.completions import StreamOptions
from service.schemas.generate import LogitBias


class TextPart(RequestBody):
    type: Literal["text"]
    text: str


class Message(RequestBody):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] = Field(description="text, or a list of text parts (joined)")
    name: str | None = Field(None, max_length=64, description="ignored")


class ChatRequest(RequestBody):
    model: ModelName
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0, le=INT32, description="tokens to generate (null: the server's limit)")
    max_completion_tokens: int | None = Field(None, ge=0, le=INT32, description="the same as max_tokens (newer name)")
    temperature: float | None = Field(1.0, ge=0, le=2, description="0 decodes greedily")
    top_p: float | None = Field(1.0, ge=0, le=1)
    n: int | None = Field(1, ge=1, le=INT32)
    stop: str | list[str] | None = Field(None, description="up to 4 stop strings, beside the template's own")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    logprobs: bool | None = Field(False, description="return each token's log-probability")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="with logprobs: the most likely tokens at each "
                                                                    "position, up to 20")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logit_bias: LogitBias = None
    presence_penalty: float | None = Field(0.0, ge=0, le=0, description="only 0 is supported")
    frequency_penalty: float | None = Field(0.0, ge=0, le=0, description="only 0 is supported")
    user: str | None = Field(None, max_length=256, description="ignored")

    model_config = {"json_schema_extra": {"examples": [
        {"model": "shakespeare-char", "messages": [{"role": "user", "content": "Speak, good sir."}], "max_tokens": 64},
    ]}}


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TokenLogprob(BaseModel):
    token: str
    logprob: float | None
    bytes: list[int]
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class TopLogprob(BaseModel):
    token: str
    logprob: float | None
    bytes: list[int]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


TokenLogprob.model_rebuild()
