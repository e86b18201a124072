"""``POST /tokenize``, ``POST /detokenize``, ``GET /tokenizer_info``: the model's tokenizer over HTTP,
in vLLM's shapes, for clients that count or build prompts in tokens ("remote tokenizer" mode of
evaluation harnesses). Works for every tokenizer kind; the ids are exactly what the generation
and scoring routes use (``add_special_tokens`` adds the text start the model reads first)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from lm.decoding.params import ParamError
from service.deps import RegistryDep, SettingsDep, resolve_model
from service.errors import ERROR_RESPONSES, APIError
from service.generation import prompt_token_texts
from service.schemas.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
    TokenizerInfoQuery,
)
from tokenizer import TokenizerError

router = APIRouter(tags=["tokenizer"])


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, registry: RegistryDep, settings: SettingsDep) -> TokenizeResponse:
    """Token ids of ``prompt`` (and, with ``add_special_tokens``, the text start before them)."""
    served = resolve_model(registry, body.model, settings)
    pipe = served.pipeline
    ids = pipe.encode(body.prompt)
    tokens = pipe.context.frame(ids)[0] if body.add_special_tokens else ids
    strs = None
    if body.return_token_strs:
        start = len(tokens) - len(ids)
        strs = [pipe.tokenizer.decode([t]) for t in tokens[:start]] + prompt_token_texts(served, ids)
    return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=pipe.config.max_context,
                            token_strs=strs)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
async def detokenize(body: DetokenizeRequest, registry: RegistryDep, settings: SettingsDep) -> DetokenizeResponse:
    """The text of ``tokens`` (an id outside the vocabulary is a 422 naming ``tokens``)."""
    served = resolve_model(registry, body.model, settings)
    try:
        return DetokenizeResponse(prompt=served.pipeline.tokenizer.decode(body.tokens))
    except (TokenizerError, ParamError) as exc:
        raise APIError(422, f"tokens: {exc}", param="tokens", code="invalid_value") from None


@router.get("/tokenizer_info", response_model=TokenizerInfo, responses=ERROR_RESPONSES)
async def tokenizer_info(registry: RegistryDep, settings: SettingsDep,
                         query: Annotated[TokenizerInfoQuery, Query()]) -> TokenizerInfo:
    """The tokenizer's kind, size and special tokens (``?model=`` when several are loaded)."""
    served = resolve_model(registry, query.model, settings)
    tok = served.pipeline.tokenizer
    ids = {"pad": tok.pad_id, "unk": tok.unk_id, "bos": tok.bos_id, "eos": tok.eos_id}
    specials = {f"{name}_token": tok.token_text(i) for name, i in ids.items()}
    return TokenizerInfo(model=served.name, tokenizer_kind=tok.kind, vocab_size=tok.vocab_size,
                         max_model_len=served.pipeline.config.max_context,
                         text_start_ids=list(served.pipeline.context.start),
                         **specials, **{f"{name}_token_id": i for name, i in ids.items()})
