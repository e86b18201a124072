"""``POST /v1/chat/completions``: OpenAI's chat API, so chat clients (the official ``openai``
client's ``chat.completions.create``) work against a base model.

The messages become one prompt by the model's chat template (``service.chat.render``: the
checkpoint's own, else a transcript ending ``Assistant:``) and the request runs through
``/v1/completions``' machinery -- the same planning, limits, queueing, stop handling and token
texts -- with the template's stop strings (the turn boundary) beside the client's; the answers are
reshaped into chat's objects: ``message`` (non-streamed) or ``delta`` chunks (a first chunk with
the role, then content deltas, a finish chunk, optionally usage, then ``data: [DONE]``). The
reply's leading whitespace (after ``Assistant:``) is dropped. ``logprobs: true`` gives each
token's log-probability, and ``top_logprobs: k`` the ``k`` most likely tokens at its position.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.sse import ServerSentEvent

from lm.decoding.streaming import piece_bytes
from service.chat import render
from service.completion_plan import Plan
from service.deps import RegistryDep, SettingsDep, request_id, resolve_model
from service.errors import ERROR_RESPONSES
from service.generation import check_limit, event_stream, now, sse, sse_content
from service.routes.completions import (
    CompletionJob,
    answer,
    deltas,
    queued,
    sse_stream,
)
from service.schemas.chat import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatRequest,
    ChoiceLogprobs,
    TokenLogprob,
    TopLogprob,
)
from service.schemas.common import Usage
from service.schemas.completions import CompletionLogprobs, CompletionRequest
from service.settings import Settings

router = APIRouter(tags=["chat"])

def completion_request(body: ChatRequest, prompt: str, settings: Settings) -> CompletionRequest:
    """The completions request a chat request stands for, with ``prompt`` its rendered messages.
    ``max_completion_tokens`` wins over ``max_tokens``; both are held to the limit."""
    if body.max_completion_tokens is not None and body.max_tokens is not None:
        check_limit(body.max_tokens, settings.max_new_tokens, "max_tokens", "max_new_tokens")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return CompletionRequest(
        model=body.model, prompt=prompt, max_tokens=max_tokens, temperature=body.temperature,
        top_p=body.top_p, n=body.n, stop=body.stop, seed=body.seed,
        stream=body.stream, stream_options=body.stream_options,
        logit_bias=body.logit_bias,
    )


async def chat_job(body: ChatRequest, request: Request, registry: RegistryDep,
                   settings: SettingsDep) -> AsyncIterator[CompletionJob]:
    """Plan and queue as ``/v1/completions`` does; errors about the prompt name ``messages``."""
    template = resolve_model(registry, body.model, settings).pipeline.chat_template
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    async with queued(completion_request(body, render(body.messages, template), settings), request, registry, settings,
                      field="messages", logprobs=logprobs, extra_stop=template.stop) as job:
        yield job


def chat_logprobs(block: CompletionLogprobs | None, top: int) -> ChoiceLogprobs | None:
    """Chat's logprobs from the completions block: per token, its ``top`` most likely
    alternatives (the completions map's first entries; the chosen token is added there last
    only when it is not among them)."""
    if block is None:
        return None
    content = []
    tops = block.top_logprobs or [None] * len(block.tokens)
    for token, lp, alts in zip(block.tokens, block.token_logprobs, tops, strict=True):
        best = list((alts or {}).items())[:top]
        content.append(TokenLogprob(token=token, logprob=lp, bytes=list(token.encode("utf-8")), top_logprobs=[
            TopLogprob(token=t, logprob=v, bytes=list(piece_bytes(t))) for t, v in best]))
    return ChoiceLogprobs(content=content)


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={
        200: {"description": "a chat completion, or with stream: true Server-Sent Events of chat.completion.chunk "
                             "objects ending with data: [DONE]",
              "content": sse_content(None, "JSON: a chat.completion.chunk, an ErrorBody, or the final [DONE]")},
        **ERROR_RESPONSES,
    },
)
async def chat_completions(
    job: Annotated[CompletionJob, Depends(chat_job)],
    body: ChatRequest,
    request: Request,
    settings: SettingsDep,
) -> Any:
    """OpenAI-compatible chat completions over a base model (streaming and not)."""
    p = job.plan
    rid = request_id(request)
    top = (body.top_logprobs or 0) if body.logprobs else 0
    if job.stream:
        return event_stream(chat_chunks(p, job, request, settings, rid, top))
    completions, usage = await answer(p, job.submission, request, settings)
    choices = [ChatChoice(index=ch.index, message=AssistantMessage(content=ch.text.lstrip()),
                          logprobs=chat_logprobs(ch.logprobs, top), finish_reason=ch.finish_reason)
               for ch in completions]
    return ChatCompletion(id=rid, created=now(), model=p.served.name, choices=choices, usage=usage)


async def chat_chunks(p: Plan, job: CompletionJob, request: Request, settings: Settings, rid: str,
                      top: int) -> AsyncIterator[ServerSentEvent]:
    """The completions stream's deltas as chat chunks: the role first, then content deltas (the
    reply's leading whitespace dropped), each choice's finish, usage if asked, then [DONE]."""
    created = now()
    started: set[int] = set()
    text_begun: set[int] = set()

    def chunk(choices: list[dict[str, Any]], usage: Usage | None = None) -> ServerSentEvent:
        body: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created,
                                "model": p.served.name, "choices": choices}
        if usage is not None:
            body["usage"] = usage.model_dump()
        return sse(body)

    async def chunks() -> AsyncIterator[ServerSentEvent]:
        async for item in deltas(p, job.submission, request, settings):
            if isinstance(item, Usage):
                if job.include_usage:
                    yield chunk([], item)
                continue
            index, text = item.index, item.text
            if index not in started:
                started.add(index)
                yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}])
            if index not in text_begun:
                text = text.lstrip()
                if text:
                    text_begun.add(index)
            lp = chat_logprobs(item.logprobs, top)
            if text or lp is not None:
                yield chunk([{"index": index, "delta": {"content": text},
                              "logprobs": None if lp is None else lp.model_dump(), "finish_reason": None}])
            if item.finish:
                yield chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": item.finish}])

    async for event in sse_stream(chunks(), request, settings):
        yield event
