"""``POST /v1/perplexity``: score texts under a model (perplexity, NLL, bits per character)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.deps import RegistryDep, SettingsDep, request_id, resolve_model
from service.errors import ERROR_RESPONSES, APIError
from service.generation import count_limit, now, run_score, score_job, token_limit
from service.schemas.common import finite
from service.schemas.perplexity import (
    PerplexityRequest,
    PerplexityResponse,
    PerplexityResult,
    PerplexityUsage,
)

router = APIRouter(tags=["scoring"])


@router.post("/v1/perplexity", response_model=PerplexityResponse, responses=ERROR_RESPONSES)
async def perplexity(
    body: PerplexityRequest,
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
) -> PerplexityResponse:
    """Perplexity, mean NLL, token count and bits per character of each text.

    Texts longer than the model's context are scored with a sliding window (``stride``).
    Scoring runs on the model's worker thread between decode steps, under the same queue bound,
    timeout and cost limit (``max_score_cost``) for every request; a client that leaves stops it.
    """
    if (body.text is None) == (body.texts is None):
        raise APIError(422, "give exactly one of text or texts", param="text", code="invalid_text")
    texts = [body.text] if body.text is not None else body.texts or []
    field = "text" if body.text is not None else "texts"
    if not texts:
        raise APIError(422, "texts must not be empty", param="texts", code="invalid_text")
    count_limit(len(texts), settings, field)
    served = resolve_model(registry, body.model, settings)
    counts = []
    for i, text in enumerate(texts):
        n = len(served.pipeline.encode(text))
        name = field if body.text is not None else f"{field}[{i}]"
        token_limit(n, settings.max_score_tokens, name, "max_score_tokens")
        counts.append(n)
    request.state.log.update(model=served.name, texts=len(texts), prompt_tokens=sum(counts))
    if settings.log_prompts:
        request.state.log["prompt"] = texts
    job = score_job(served, texts, settings, field, stride=body.stride)
    await run_score(served, job, request, settings, request_id(request))
    scores = served.pipeline.score_results(texts, job, token_logprobs=body.token_logprobs)
    served.scheduler.metrics.prompt_tokens.labels(served.name).inc(sum(s.tokens for s in scores))
    results = [
        PerplexityResult(
            index=i,
            tokens=s.tokens,
            characters=s.characters,
            nll=finite(s.nll),
            nll_per_token=finite(s.nll / s.tokens) if s.tokens else None,
            perplexity=finite(s.perplexity),
            bits_per_char=finite(s.bits_per_char),
            token_logprobs=None if s.token_logprobs is None else [finite(x) for x in s.token_logprobs],
        )
        for i, s in enumerate(scores)
    ]
    total = sum(s.tokens for s in scores)
    return PerplexityResponse(
        id=request_id(request), created=now(), model=served.name, results=results,
        usage=PerplexityUsage(prompt_tokens=total, total_tokens=total),
    )
