"""``POST /v1/generate`` and ``POST /v1/generate/stream``: the engine's full option set."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from lm.decoding.params import Completion, FinishEvent, GenerationParams, TokenEvent
from service.deps import RegistryDep, SettingsDep, request_id, resolve_model
from service.errors import ERROR_RESPONSES, JSON_ERROR_RESPONSES, APIError
from service.generation import (
    Prompt,
    build_params,
    check_decoding_limits,
    check_token_ids,
    collect,
    encode_prompts,
    events_until_done,
    logit_bias,
    now,
    owned,
    sse,
    sse_content,
    sse_error,
    submit,
    token_texts,
)
from service.registry import ModelRegistry, ServedModel
from service.scheduler import Submission
from service.schemas.common import Usage, finite
from service.schemas.generate import GenerateChoice, GenerateRequest, GenerateResponse
from service.settings import Settings

router = APIRouter(tags=["generation"])

DEFAULT_MAX_NEW_TOKENS = GenerationParams().max_new_tokens

MAX_STOP = 16
"""Stop strings one /v1/generate request may give."""

SSE_DOC = {
    "description": (
        "Server-Sent Events: `event: token` per text delta (beam search sends none: a beam's text is "
        "final only when the search ends), `event: finish` per sequence with finish_reason and usage, "
        "`event: done` with the total usage, or `event: error` with an error body."
    ),
    "content": sse_content(
        ["token", "finish", "done", "error"],
        "JSON: TokenData (token), FinishData (finish), DoneData (done) or ErrorBody (error)",
    ),
}


def prepare(body: GenerateRequest, request: Request, registry: ModelRegistry, settings: Settings
            ) -> tuple[ServedModel, list[Prompt], GenerationParams]:
    """Pick the model, check every limit, encode the prompts and build the engine's parameters."""
    if (body.prompt is None) == (body.prompts is None):
        raise APIError(422, "give exactly one of prompt or prompts", param="prompt", code="invalid_prompt")
    served = resolve_model(registry, body.model, settings)
    options: dict[str, Any] = body.model_dump(exclude={"model", "prompt", "prompts", "stop"})
    if options["max_new_tokens"] is None:
        options["max_new_tokens"] = min(DEFAULT_MAX_NEW_TOKENS, settings.max_new_tokens)
    if "num_beams" not in body.model_fields_set:  # the engine's default width, within this server's limits
        options["num_beams"] = min(options["num_beams"], settings.beam_limit)
    check_decoding_limits(settings, options)
    stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    if len(stop) > MAX_STOP or any(not s for s in stop):
        raise APIError(422, f"stop takes up to {MAX_STOP} non-empty strings", param="stop", code="invalid_stop")
    options.update(logit_bias=logit_bias(body.logit_bias), suppress_tokens=tuple(body.suppress_tokens or ()))
    params = build_params({**options, "stop": tuple(stop)})
    check_token_ids(served, params)
    single = body.prompt is not None
    texts = [body.prompt] if single else body.prompts
    field = "prompt" if single else "prompts"
    if not texts:
        raise APIError(422, "prompts must not be empty", param="prompts", code="invalid_prompt")
    prompts = encode_prompts(served, texts, settings, field, single=single)
    log = request.state.log
    log.update(model=served.name, strategy=params.strategy, prompts=len(prompts),
               prompt_tokens=sum(len(p.ids) for p in prompts))
    if settings.log_prompts:
        log["prompt"] = texts
    return served, prompts, params


def choice(served: ServedModel, prompt: Prompt, prompt_index: int, index: int, c: Completion) -> GenerateChoice:
    return GenerateChoice(
        prompt_index=prompt_index,
        index=index,
        text=c.text,
        token_ids=c.token_ids,
        tokens=token_texts(served, prompt.ids, c.token_ids, c.text),
        logprobs=[finite(x) for x in c.logprobs],
        cumulative_logprob=finite(c.cumulative_logprob),
        finish_reason=c.finish_reason,  # type: ignore[arg-type]
    )


@router.post("/v1/generate", response_model=GenerateResponse, responses=ERROR_RESPONSES)
async def generate(
    body: GenerateRequest,
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
) -> GenerateResponse:
    """Generate continuations for one prompt or a batch, with any decoding strategy."""
    served, prompts, params = prepare(body, request, registry, settings)
    rid = request_id(request)
    results = await collect(submit(served, prompts, params, rid, settings, stream=False), request, settings)
    choices = [choice(served, prompts[p], p, i, c) for p, row in enumerate(results) for i, c in enumerate(row)]
    prompt_tokens = sum(len(p.ids) for p in prompts)
    completion_tokens = sum(len(c.token_ids) for c in choices)
    request.state.log["completion_tokens"] = completion_tokens
    return GenerateResponse(
        id=rid,
        created=now(),
        model=served.name,
        choices=choices,
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                    total_tokens=prompt_tokens + completion_tokens),
    )


@dataclass
class StreamJob:
    """A streamed request, checked and queued before the response starts."""

    served: ServedModel
    prompts: list[Prompt]
    submission: Submission
    rid: str


async def stream_job(body: GenerateRequest, request: Request, registry: RegistryDep,
                     settings: SettingsDep) -> AsyncIterator[StreamJob]:
    """Check, encode and queue the request (failures are 4xx/5xx JSON: nothing is streamed yet);
    the submission is cancelled when the response is over, however it ends (``owned``)."""
    served, prompts, params = prepare(body, request, registry, settings)
    rid = request_id(request)
    with owned(submit(served, prompts, params, rid, settings, stream=True)) as submission:
        yield StreamJob(served, prompts, submission, rid)


@router.post(
    "/v1/generate/stream",
    response_class=EventSourceResponse,
    responses={200: SSE_DOC, **JSON_ERROR_RESPONSES},
)
async def generate_stream(
    job: Annotated[StreamJob, Depends(stream_job)],
    request: Request,
    settings: SettingsDep,
) -> AsyncIterator[ServerSentEvent]:
    """Like /v1/generate, streamed as Server-Sent Events, one event per text delta."""
    served, prompts, rid = job.served, job.prompts, job.rid
    completion_tokens = 0
    try:
        async for prompt_index, event in events_until_done(job.submission, request, settings):
            if isinstance(event, TokenEvent):
                yield sse({"prompt_index": prompt_index, "index": event.index, "text": event.text,
                           "token_id": event.token_id, "logprob": finite(event.logprob)}, event="token")
            elif isinstance(event, FinishEvent):
                if event.text:  # held back to the end (a row with no token left to choose)
                    yield sse({"prompt_index": prompt_index, "index": event.index, "text": event.text,
                               "token_id": None, "logprob": None}, event="token")
                c = event.completion
                completion_tokens += len(c.token_ids)
                n = len(prompts[prompt_index].ids)
                usage = {"prompt_tokens": n, "completion_tokens": len(c.token_ids),
                         "total_tokens": n + len(c.token_ids)}
                yield sse({"prompt_index": prompt_index, "index": event.index, "text": c.text,
                           "finish_reason": c.finish_reason, "usage": usage}, event="finish")
        prompt_tokens = sum(len(p.ids) for p in prompts)
        yield sse({"id": rid, "model": served.name,
                   "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}}, event="done")
    except Exception as exc:
        request.state.log["error"] = type(exc).__name__
        yield sse_error(exc, settings)
    finally:
        request.state.log["completion_tokens"] = completion_tokens
