"""``POST /v1/completions``: OpenAI's completions API, so existing OpenAI clients work unchanged.

Mapping onto the engine: ``temperature: 0`` decodes greedily (OpenAI's convention), anything
else samples with ``temperature``/``top_p``/``seed``; ``n`` becomes ``num_return_sequences``
(greedy sequences are identical, so one is decoded and repeated). ``use_beam_search`` (an
extension, as in vLLM) decodes with ``best_of`` beams and returns the ``n`` best, best first.
``logprobs: k`` returns the
chosen token's log-probability; ``top_logprobs`` lists only that token (the engine reports no
alternatives). ``finish_reason`` is ``length`` at ``max_tokens``, else ``stop`` (a stop string,
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
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.sse import ServerSentEvent

from lm.decoding.params import Completion, FinishEvent, GenerationParams, TokenEvent
from lm.decoding.streaming import PieceAligner
from service.deps import RegistryDep, SettingsDep, request_id, resolve_model
from service.errors import ERROR_RESPONSES, APIError
from service.generation import (
    Prompt,
    build_params,
    check_decoding_limits,
    check_token_ids,
    collect,
    count_limit,
    encode_prompts,
    event_stream,
    events_until_done,
    logit_bias,
    now,
    owned,
    prompt_token_texts,
    run_score,
    score_job,
    sse,
    sse_content,
    sse_error,
    submit,
    token_limit,
    token_texts,
)
from service.registry import ModelRegistry, ServedModel
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

OPENAI_NAMES = {"max_new_tokens": "max_tokens", "num_return_sequences": "n", "num_beams": "best_of"}
MAX_STOP = 4


@dataclass
class Plan:
    """A completions request resolved against one model."""

    served: ServedModel
    prompts: list[Prompt]
    params: GenerationParams
    n: int
    repeat: int
    """Copies of each decoded sequence (greedy with n > 1 decodes once)."""
    logprobs: int | None
    echo: bool
    prompt_logprobs: list[list[float | None]] = field(default_factory=list)
    prompt_pieces: list[list[str]] = field(default_factory=list)
    """Each prompt's token texts (for ``echo``): they join to the echoed text."""

    def echo_text(self, prompt_index: int) -> str:
        return "".join(self.prompt_pieces[prompt_index]) if self.echo else ""


def _prompts(body: CompletionRequest, served: ServedModel, settings: Settings, field: str) -> list[Prompt]:
    p = body.prompt
    if isinstance(p, str):
        return encode_prompts(served, [p], settings, field, single=True)
    if not p:
        raise APIError(422, "prompt must not be an empty list", param="prompt", code="invalid_prompt")
    if isinstance(p[0], str):
        return encode_prompts(served, p, settings, "prompt", single=False)  # type: ignore[arg-type]
    id_lists = [p] if isinstance(p[0], int) else p
    count_limit(len(id_lists), settings, "prompt")
    prompts = []
    for i, ids in enumerate(id_lists):
        ids = list(ids)  # type: ignore[arg-type]
        token_limit(len(ids), settings.max_prompt_tokens, f"prompt[{i}]", "max_prompt_tokens")
        bad = [t for t in ids if not 0 <= t < served.vocab_size]
        if bad:
            raise APIError(422, f"prompt[{i}] has token id {bad[0]} outside [0, {served.vocab_size})",
                           param="prompt", code="invalid_prompt")
        prompts.append(Prompt(served.pipeline.tokenizer.decode(ids), ids))
    return prompts


def plan(body: CompletionRequest, request: Request, registry: ModelRegistry, settings: Settings, *,
         field: str = "prompt") -> Plan:
    """The request resolved against its model; errors about a string prompt name ``field`` (the
    chat route's prompt is its ``messages``)."""
    served = resolve_model(registry, body.model, settings)
    n = body.n or 1
    if body.best_of is not None and body.best_of != n and not body.use_beam_search:
        raise APIError(422, "best_of is only supported equal to n (or as the beam width with use_beam_search)",
                       param="best_of", code="unsupported")
    stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    if len(stop) > MAX_STOP or any(not s for s in stop):
        raise APIError(422, f"stop takes up to {MAX_STOP} non-empty strings", param="stop", code="invalid_stop")
    max_tokens = settings.max_new_tokens if body.max_tokens is None else body.max_tokens
    temperature = 1.0 if body.temperature is None else body.temperature
    greedy = temperature == 0 and not body.use_beam_search
    options: dict[str, Any] = {"max_new_tokens": max_tokens, "stop": tuple(stop), "logit_bias": logit_bias(body.logit_bias)}
    if body.use_beam_search:
        options.update(strategy="beam", num_beams=body.best_of or max(n, 4), num_return_sequences=n,
                       length_penalty=body.length_penalty, early_stopping=body.early_stopping)
    elif greedy:
        options["strategy"] = "greedy"
    else:
        options.update(strategy="sample", temperature=temperature, top_p=1.0 if body.top_p is None else body.top_p,
                       seed=body.seed, num_return_sequences=n)
    check_decoding_limits(settings, {**options, "num_return_sequences": n}, names=OPENAI_NAMES)
    params = build_params(options, names=OPENAI_NAMES)
    check_token_ids(served, params)
    prompts = _prompts(body, served, settings, field)
    log = request.state.log
    log.update(model=served.name, strategy=params.strategy, prompts=len(prompts),
               prompt_tokens=sum(len(p.ids) for p in prompts))
    if settings.log_prompts:
        log["prompt"] = [p.text for p in prompts]
    out = Plan(served, prompts, params, n, n if greedy else 1, body.logprobs, bool(body.echo))
    if out.echo:
        out.prompt_pieces = [prompt_token_texts(served, p.ids) for p in prompts]
    return out


def finish_reason(c: Completion) -> str:
    return "length" if c.finish_reason == "length" else "stop"


def logprobs_block(tokens: list[str], lps: list[float | None], start: int, k: int) -> CompletionLogprobs:
    """OpenAI's logprobs object; ``start`` is the character offset of the first token."""
    offsets = []
    for t in tokens:
        offsets.append(start)
        start += len(t)
    top = [({t: lp} if lp is not None else None) for t, lp in zip(tokens, lps, strict=True)] if k > 0 else None
    return CompletionLogprobs(tokens=tokens, token_logprobs=lps, top_logprobs=top, text_offset=offsets)


async def prompt_logprobs(plan: Plan, request: Request, settings: Settings, rid: str) -> None:
    """Log-probabilities of the prompt tokens, for ``echo`` with ``logprobs``, scored on the
    model's worker like ``/v1/perplexity`` (queue bound, timeout, cost limit, disconnects).

    Every prompt token gets one (the first is conditioned on the model's text start, as
    ``lm.score`` does), unlike OpenAI's null for the first token.
    """
    texts = [p.text for p in plan.prompts]
    served = plan.served
    job = score_job(served, texts, settings, "prompt")
    await run_score(served, job, request, settings, rid)
    for p, s in zip(plan.prompts, served.pipeline.score_results(texts, job, token_logprobs=True), strict=True):
        lps = [finite(x) for x in (s.token_logprobs or [])]
        lps = [None] * max(0, len(p.ids) - len(lps)) + lps[-len(p.ids):] if p.ids else []
        plan.prompt_logprobs.append(lps)


def choice(plan: Plan, prompt_index: int, c: Completion) -> CompletionChoice:
    prompt = plan.prompts[prompt_index]
    text = plan.echo_text(prompt_index) + c.text
    logprobs = None
    if plan.logprobs is not None:
        tokens = token_texts(plan.served, prompt.ids, c.token_ids, c.text)
        lps = [finite(x) for x in c.logprobs]
        if plan.echo:
            tokens = plan.prompt_pieces[prompt_index] + tokens
            lps = plan.prompt_logprobs[prompt_index] + lps
        logprobs = logprobs_block(tokens, lps, 0, plan.logprobs)
    return CompletionChoice(text=text, index=0, logprobs=logprobs, finish_reason=finish_reason(c))  # type: ignore[arg-type]


@dataclass
class CompletionJob:
    """A completions request, planned and queued before the response starts."""

    plan: Plan
    submission: Submission
    stream: bool
    include_usage: bool


@contextlib.asynccontextmanager
async def queued(body: CompletionRequest, request: Request, registry: ModelRegistry, settings: Settings, *,
                 field: str = "prompt") -> AsyncIterator[CompletionJob]:
    """Resolve, check and queue the request before any response starts (failures are JSON
    errors, streamed or not); the submission is cancelled when the response is over (``owned``)."""
    p = plan(body, request, registry, settings, field=field)
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
    piece_pos: dict[int, int] = {}  # where each choice's next token text begins
    completion_tokens = 0

    def emit(prompt_index: int, seq: int, text: str, pieces: list[tuple[str, float]],
             finish: str | None = None) -> Iterator[Delta]:
        """A delta with ``text`` and the tokens it completes; with ``finish``, only if it carries
        something, then the finish."""
        for index in indexes(prompt_index, seq):
            lp = None
            if p.logprobs is not None:
                pos = piece_pos.setdefault(index, starts[index])
                lp = logprobs_block([t for t, _ in pieces], [finite(x) for _, x in pieces], pos, p.logprobs)
                piece_pos[index] = pos + sum(len(t) for t, _ in pieces)
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
                                            p.logprobs)
                    yield Delta(index, echoed, lp)
        async for prompt_index, event in events_until_done(submission, request, settings):
            key = (prompt_index, event.index)
            if key not in aligners:
                context, _ = p.served.pipeline.context.frame(p.prompts[prompt_index].ids)
                aligners[key] = PieceAligner(p.served.pipeline.tokenizer, context)
            aligner = aligners[key]
            first = indexes(*key)[0]
            if isinstance(event, TokenEvent):
                released = offsets[first] - starts[first] + len(event.text)
                pieces = aligner.push(event.token_id, event.logprob, released)
                for delta in emit(*key, event.text, pieces):
                    yield delta
            elif isinstance(event, FinishEvent):
                c = event.completion
                completion_tokens += len(c.token_ids) * p.repeat
                text = event.text
                if p.params.strategy == "beam":  # a beam's text is known only when the search ends
                    for token_id, logprob in zip(c.token_ids, c.logprobs, strict=True):
                        aligner.push(token_id, logprob, 0)
                    text = c.text
                pieces = aligner.finish(len(c.text))
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
