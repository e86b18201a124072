"""``POST /v1/completions``: OpenAI's completions API, so existing OpenAI clients work unchanged.

Mapping onto the engine: ``temperature: 0`` decodes greedily (OpenAI's convention), anything
else samples with ``temperature``/``top_p``/``seed``; ``n`` becomes ``num_return_sequences``
(greedy sequences are identical, so one is decoded and repeated). ``use_beam_search`` (an
extension, as in vLLM) decodes with ``best_of`` beams and returns the ``n`` best, best first.
``logprobs: k`` returns each
token's log-probability and in ``top_logprobs`` the ``k`` most likely tokens at its position
(``service.generation.top_maps``) plus the chosen one: up to ``k + 1``, as OpenAI documents; the
engine and, for an echoed prompt, the scorer take them from the same distribution as the
chosen token's. ``finish_reason`` is ``length`` at ``max_tokens``, else ``stop`` (a stop string,
end-of-sequence, or no token left to choose).

Token texts are each token's piece of the text (``lm.decoding.streaming.token_pieces``), so for every
tokenizer kind ``"".join(tokens) == text``, ``text_offset`` indexes ``text``, and a stream's
chunks carry exactly the tokens and offsets of the non-streamed answer. ``echo`` returns the
prompt as the model read it (the prompt itself for char and sentencepiece models, whose
tokenization is lossless; a word model's detokenized prompt).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.sse import ServerSentEvent

from lm.decoding.params import FinishEvent, TokenEvent
from lm.decoding.streaming import PieceAligner
from service.completion_plan import (
    Plan,
    choice,
    finish_reason,
    logprobs_block,
    plan,
    prompt_logprobs,
)
from service.deps import RegistryDep, SettingsDep, request_id
from service.errors import ERROR_RESPONSES
from service.generation import (
    collect,
    event_stream,
    events_until_done,
    now,
    owned,
    sse,
    sse_content,
    sse_error,
    submit,
    top_maps,
)
from service.registry import ModelRegistry
from service.scheduler import Submission
from service.schemas.common import Usage, finite
from service.schemas.completions import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from service.settings import Settings

router = APIRouter(tags=["openai"])


@dataclass
class CompletionJob:
    """A completions request, planned and queued before the response starts."""

    plan: Plan
    submission: Submission
    stream: bool
    include_usage: bool


@contextlib.asynccontextmanager
async def queued(body: CompletionRequest, request: Request, registry: ModelRegistry, settings: Settings, *,
                 field: str = "prompt", logprobs: int | None = None, extra_stop: tuple[str, ...] = ()
                 ) -> AsyncIterator[CompletionJob]:
    """Resolve, check and queue the request before any response starts (failures are JSON
    errors, streamed or not); the submission is cancelled when the response is over (``owned``).
    The keywords are the chat route's (``plan``)."""
    p = plan(body, request, registry, settings, field=field, logprobs=logprobs, extra_stop=extra_stop)
    rid = request_id(request)
    if p.echo and p.logprobs is not None:
        await prompt_logprobs(p, request, settings, rid)
    stream = bool(body.stream)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    with owned(submit(p.served, p.prompts, p.params, rid, settings, stream=stream)) as submission:
        yield CompletionJob(p, submission, stream, include_usage)


async def completion_job(body: CompletionRequest, request: Request, registry: RegistryDep,
                         settings: SettingsDep) -> AsyncIterator[CompletionJob]:
    async with queued(body, request, registry, settings) as job:
        yield job


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses={
        200: {
            "description": "a completion, or with stream: true Server-Sent Events of completion chunks ending with data: [DONE]",
            "content": sse_content(None, "JSON: a CompletionResponse chunk, an ErrorBody, or the final [DONE]"),
        },
        **ERROR_RESPONSES,
    },
)
async def completions(
    job: Annotated[CompletionJob, Depends(completion_job)],
    request: Request,
    settings: SettingsDep,
) -> Any:
    """OpenAI-compatible text completions (streaming and not)."""
    p = job.plan
    rid = request_id(request)
    if job.stream:
        return event_stream(stream(p, job.submission, request, settings, rid, job.include_usage))
    choices, usage = await answer(p, job.submission, request, settings)
    return CompletionResponse(id=rid, created=now(), model=p.served.name, choices=choices, usage=usage)


async def answer(p: Plan, submission: Submission, request: Request, settings: Settings
                 ) -> tuple[list[CompletionChoice], Usage]:
    """The non-streamed choices (``n`` per prompt, in order) and the usage of a planned request."""
    results = await collect(submission, request, settings)
    choices = []
    for prompt_index, row in enumerate(results):
        for c in row:
            for _ in range(p.repeat):
                ch = choice(p, prompt_index, c)
                ch.index = len(choices)
                choices.append(ch)
    prompt_tokens = sum(len(x.ids) for x in p.prompts)
    completion_tokens = sum(len(c.token_ids) for row in results for c in row) * p.repeat
    request.state.log["completion_tokens"] = completion_tokens
    return choices, Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          total_tokens=prompt_tokens + completion_tokens)


@dataclass
class Delta:
    """One piece of a streamed choice: text (and the tokens it completes), or its finish."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish: str | None = None


async def deltas(p: Plan, submission: Submission, request: Request, settings: Settings
                 ) -> AsyncIterator[Delta | Usage]:
    """A streamed request's choices as they grow: the echoed prompt, one ``Delta`` per text
    delta, a finish ``Delta`` per choice, and last the ``Usage``. Shared by the completions and
    chat streams, which only format them."""

    def indexes(prompt_index: int, seq: int) -> range:
        first = (prompt_index * p.n) + seq * p.repeat
        return range(first, first + p.repeat)

    offsets: dict[int, int] = {}  # characters of each choice's text sent so far
    starts: dict[int, int] = {}  # where each choice's completion begins in its text
    aligners: dict[tuple[int, int], PieceAligner] = {}  # per decoded sequence: its token texts
    read: dict[tuple[int, int], list[int]] = {}  # per decoded sequence: the ids its released tokens follow
    piece_pos: dict[int, int] = {}  # where each choice's next token text begins
    completion_tokens = 0

    def emit(prompt_index: int, seq: int, text: str, pieces: list[tuple[str, Any]],
             finish: str | None = None) -> Iterator[Delta]:
        """A delta with ``text`` and the tokens it completes (``pieces``: each token's text and
        its ``(id, logprob, alternatives)``); with ``finish``, only if it carries something,
        then the finish."""
        texts = [t for t, _ in pieces]
        lps = [finite(x[1]) for _, x in pieces]
        tops = None
        if p.logprobs:
            ids = [x[0] for _, x in pieces]
            tops = top_maps(p.served, read[(prompt_index, seq)], ids, texts, lps, [x[2] for _, x in pieces])
            read[(prompt_index, seq)] += ids
        for index in indexes(prompt_index, seq):
            lp = None
            if p.logprobs is not None:
                pos = piece_pos.setdefault(index, starts[index])
                lp = logprobs_block(texts, lps, pos, tops)
                piece_pos[index] = pos + sum(len(t) for t in texts)
            offsets[index] += len(text)
            if finish is None or text or (pieces and lp is not None):
                yield Delta(index, text, lp)
            if finish is not None:
                yield Delta(index, "", finish=finish)

    try:
        for prompt_index in range(len(p.prompts)):
            echoed = p.echo_text(prompt_index)
            for k in range(p.n):
                index = prompt_index * p.n + k
                offsets[index] = starts[index] = len(echoed)
                if p.echo:
                    lp = None
                    if p.logprobs is not None:
                        lp = logprobs_block(p.prompt_pieces[prompt_index], p.prompt_logprobs[prompt_index], 0,
                                            p.prompt_tops[prompt_index] if p.logprobs else None)
                    yield Delta(index, echoed, lp)
        tokens_wanted = p.logprobs is not None  # token texts only for logprobs: no second detokenizer else
        async for prompt_index, event in events_until_done(submission, request, settings):
            key = (prompt_index, event.index)
            aligner = aligners.get(key)
            if aligner is None and tokens_wanted:
                context, _ = p.served.pipeline.context.frame(p.prompts[prompt_index].ids)
                aligner = aligners[key] = PieceAligner(p.served.pipeline.tokenizer, context)
                read[key] = list(context)
            first = indexes(*key)[0]
            if isinstance(event, TokenEvent):
                pieces = []
                if aligner is not None:
                    released = offsets[first] - starts[first] + len(event.text)
                    pieces = aligner.push(event.token_id, (event.token_id, event.logprob, event.top), released)
                for delta in emit(*key, event.text, pieces):
                    yield delta
            elif isinstance(event, FinishEvent):
                c = event.completion
                completion_tokens += len(c.token_ids) * p.repeat
                text = event.text
                if p.params.strategy == "beam":  # a beam's text is known only when the search ends
                    text = c.text
                    if aligner is not None:
                        tops = c.top_logprobs or [()] * len(c.token_ids)
                        for token_id, logprob, top in zip(c.token_ids, c.logprobs, tops, strict=True):
                            aligner.push(token_id, (token_id, logprob, top), 0)
                pieces = aligner.finish(len(c.text)) if aligner is not None else []
                for delta in emit(*key, text, pieces, finish=finish_reason(c)):
                    yield delta
        prompt_tokens = sum(len(x.ids) for x in p.prompts)
        yield Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                    total_tokens=prompt_tokens + completion_tokens)
    finally:
        request.state.log["completion_tokens"] = completion_tokens


async def sse_stream(events: AsyncIterator[ServerSentEvent], request: Request, settings: Settings
                     ) -> AsyncIterator[ServerSentEvent]:
    """``events``, then ``data: [DONE]``; an error after the headers went out is an in-band
    ``{"error": ...}`` event, where OpenAI clients look for it."""
    try:
        async for event in events:
            yield event
        yield sse("[DONE]")
    except Exception as exc:
        request.state.log["error"] = type(exc).__name__
        yield sse_error(exc, settings, event=None)


async def stream(p: Plan, submission: Submission, request: Request, settings: Settings, rid: str,
                 include_usage: bool) -> AsyncIterator[ServerSentEvent]:
    """Completion chunks: the echoed prompt, one chunk per delta, a finish chunk, then [DONE]."""
    created = now()

    async def chunks() -> AsyncIterator[ServerSentEvent]:
        async for item in deltas(p, submission, request, settings):
            if isinstance(item, Usage):
                if include_usage:
                    body = CompletionResponse(id=rid, created=created, model=p.served.name, choices=[], usage=item)
                    yield sse(body.model_dump(mode="json"))
                continue
            body = CompletionResponse(id=rid, created=created, model=p.served.name, choices=[CompletionChoice(
                text=item.text, index=item.index, logprobs=item.logprobs, finish_reason=item.finish)])  # type: ignore[arg-type]
            yield sse(body.model_dump(mode="json", exclude={"usage"}))

    async for event in sse_stream(chunks(), request, settings):
        yield event
