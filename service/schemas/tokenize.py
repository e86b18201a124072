"""Bodies of ``POST /tokenize``, ``POST /detokenize`` and ``GET /tokenizer_info`` (vLLM's names and
shapes, so evaluation harnesses that tokenize through the server work unchanged)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.common import ModelName, RequestBody


class TokenizeRequest(RequestBody):
    model: ModelName
    prompt: str = Field(description="the text to tokenize (bounded by max_body_bytes)")
    add_special_tokens: bool = Field(
        True, description="include the text-start tokens the model reads before every text (as vLLM adds BOS)")
    return_token_strs: bool = Field(False, description="also return each token's text")


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int | None = Field(description="the model's context length (null: recurrent, unbounded)")
    token_strs: list[str] | None = None


class DetokenizeRequest(RequestBody):
    model: ModelName
    tokens: list[int] = Field(description="token ids, each in [0, vocab size)")


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    model: str
    tokenizer_kind: str = Field(description="char, word, bpe or unigram")
    vocab_size: int
    max_model_len: int | None
    bos_token: str
    bos_token_id: int
    eos_token: str
    eos_token_id: int
    pad_token: str
    pad_token_id: int
    unk_token: str
    unk_token_id: int
    text_start_ids: list[int] = Field(description="what the model reads before every text (add_special_tokens)")


class TokenizerInfoQuery(BaseModel):
    """``GET /tokenizer_info``'s query: a parameter it does not know is a 422, not ignored."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, max_length=256, description="a name from GET /v1/models")
