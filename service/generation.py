"""From HTTP to the decode scheduler and back: limits, parameters, waiting, cancelling.

Shared by ``/v1/generate``, ``/v1/generate/stream`` and ``/v1/completions`` so the three apply
the same limits and map the same failures to the same status codes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.sse import EventSourceResponse, ServerSentEvent, format_sse_event

from lm.decoding.params import (
    Alternatives,
    Completion,
    FinishEvent,
    GenerationParams,
    ParamError,
    TokenEvent,
)
from lm.decoding.streaming import PROMPT_CONTEXT, candidate_pieces, token_pieces
from lm.score import ScoreJob
from service.errors import APIError, error_body
from service.registry import ServedModel
from service.scheduler import Event, GenerationFailed, QueueFull, SchedulerStopped, Submission
from service.schemas.common import finite
from service.settings import Settings

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.5


@dataclass
class Prompt:
    """One prompt, encoded once and counted against the limit."""

    text: str
    ids: list[int]


def check_limit(value: int, limit: int, field: str, setting: str, *, what: str | None = None) -> None:
    """422 naming the field (``param``), the value, the limit and the setting that sets it."""
    if value > limit:
        raise APIError(
            422, f"{what or field} is {value}; the limit is {limit} ({setting})", param=field, code="over_limit"
        )


def count_limit(n: int, settings: Settings, field: str) -> None:
    check_limit(n, settings.max_prompts, field, "max_prompts", what=f"number of {field}")


def token_limit(n: int, limit: int, field: str, setting: str) -> None:
    check_limit(n, limit, field, setting, what=f"{field} length in tokens")


def check_decoding_limits(
    settings: Settings, params: dict[str, Any], *, names: dict[str, str] | None = None
) -> None:
    """Service limits on the decoding options; ``names`` renames fields (OpenAI's ``max_tokens``)."""
    names = names or {}
    check_limit(params.get("max_new_tokens", 0), settings.max_new_tokens,
                names.get("max_new_tokens", "max_new_tokens"), "max_new_tokens")
    if "num_beams" in params:  # bounded whatever the strategy, as the schema says
        check_limit(params.get("num_beams", 1), settings.max_num_beams, names.get("num_beams", "num_beams"),
                    "max_num_beams")
    check_limit(params.get("num_return_sequences", 1), settings.max_return_sequences,
                names.get("num_return_sequences", "num_return_sequences"), "max_return_sequences")


def build_params(options: dict[str, Any], *, names: dict[str, str] | None = None) -> GenerationParams:
    """``GenerationParams`` from request fields; the engine's own checks become 422s."""
    try:
        return GenerationParams(**options)
    except ParamError as exc:
        field = getattr(exc, "field", None)
        if field and names:
            field = names.get(field, field)
        raise APIError(422, str(exc), param=field, code="invalid_parameter") from None


def logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``logit_bias`` (ids as string keys) as the engine's pairs; a key that is not an
    id is a 422 naming the field (the values are checked by the engine)."""
    pairs = []
    for key, value in (bias or {}).items():
        if not (key.isascii() and key.isdecimal()) or str(int(key)) != key:
            raise APIError(422, f"logit_bias keys must be token ids (decimal, no leading zeros), got {key!r}",
                           param="logit_bias", code="invalid_parameter")
        pairs.append((int(key), value))
    return tuple(pairs)


def check_token_ids(served: ServedModel, params: GenerationParams) -> None:
    """Every id the parameters name is in the model's vocabulary (else a 422 naming the field),
    before anything is queued or streamed."""
    try:
        params.check_vocab(served.vocab_size)
    except ParamError as exc:
        raise APIError(422, str(exc), param=exc.field, code="invalid_parameter") from None


def encode_prompts(served: ServedModel, texts: Sequence[str], settings: Settings, field: str, *, single: bool) -> list[Prompt]:
    """Encode and check each prompt against ``max_prompt_tokens``; errors name ``field[i]``."""
    count_limit(len(texts), settings, field)
    prompts = []
    for i, text in enumerate(texts):
        ids = served.pipeline.encode(text)
        name = field if single else f"{field}[{i}]"
        token_limit(len(ids), settings.max_prompt_tokens, name, "max_prompt_tokens")
        prompts.append(Prompt(text, ids))
    return prompts


def submit(
    served: ServedModel, prompts: list[Prompt], params: GenerationParams, request_id: str, settings: Settings,
    *, stream: bool,
) -> Submission:
    """Queue every prompt of the request at once, or refuse the whole request (429/503)."""
    try:
        return served.scheduler.submit([(p.ids, params) for p in prompts], request_id, stream=stream)
    except QueueFull as exc:
        served.scheduler.metrics.rejected.labels("queue_full").inc()
        raise APIError(429, str(exc), code="queue_full", headers={"Retry-After": str(settings.retry_after_s)}) from None
    except SchedulerStopped as exc:
        raise APIError(503, str(exc), code="not_ready", headers={"Retry-After": str(settings.retry_after_s)}) from None


def score_job(served: ServedModel, texts: list[str], settings: Settings, field: str, *,
              stride: int | None = None, top: int = 0) -> ScoreJob:
    """The scoring of ``texts``, refused (422) if it would run more token positions through
    the model than ``max_score_cost`` allows -- every window counted, so ``stride: 1`` costs
    the window length per token -- or if the scorer refuses an argument (a bad ``stride``)."""
    try:
        job = served.pipeline.score_job(texts, stride=stride, top=top)
    except ParamError as exc:
        raise APIError(422, str(exc), param=exc.field, code="invalid_parameter") from None
    what = "scoring cost (token positions run through the model, every window counted)"
    if stride is not None and job.cost > settings.max_score_cost:
        what += "; a larger stride costs less"
    check_limit(job.cost, settings.max_score_cost, field, "max_score_cost", what=what)
    return job


async def run_score(served: ServedModel, job: ScoreJob, request: Request, settings: Settings,
                    request_id: str) -> ScoreJob:
    """Run a scoring job on the model's worker, under the queue bound (429/503 as for
    generation) and the request timeout (504); it stops when the client disconnects."""
    task = asyncio.ensure_future(served.scheduler.score(job, request_id))
    watcher = asyncio.ensure_future(_watch_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=settings.request_timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            exc = task.exception()
            if isinstance(exc, QueueFull):
                served.scheduler.metrics.rejected.labels("queue_full").inc()
                raise APIError(429, str(exc), code="queue_full",
                               headers={"Retry-After": str(settings.retry_after_s)}) from None
            if exc is not None:
                raise as_api_error(exc, settings) from None
            return task.result()
        if watcher in done:
            raise ClientGone
        raise as_api_error(TimeoutError(), settings)
    finally:
        for t in (task, watcher):
            t.cancel()


def as_api_error(exc: BaseException, settings: Settings) -> APIError:
    """What the client sees for a failure raised while its request was decoding."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ParamError):
        return APIError(422, str(exc), param=getattr(exc, "field", None), code="invalid_parameter")
    if isinstance(exc, TimeoutError):
        return APIError(
            504, f"request did not finish within {settings.request_timeout_s:g} s (request_timeout_s)", code="timeout"
        )
    if isinstance(exc, SchedulerStopped):
        return APIError(503, str(exc), code="not_ready", headers={"Retry-After": str(settings.retry_after_s)})
    if isinstance(exc, GenerationFailed):
        return APIError(500, "generation failed", code="internal_error")
    log.error("request failed: %r", exc)
    return APIError(500, "internal server error", code="internal_error")


class ClientGone(Exception):
    """The client closed the connection before the response was ready."""


async def _watch_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)


async def collect(submission: Submission, request: Request, settings: Settings) -> list[list[Completion]]:
    """Wait for every sequence of a submission; cancel it if the client leaves or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.request_timeout_s
    results: list[list[Completion | None]] = [[None] * t.expected for t in submission.tickets]

    async def consume() -> None:
        async for index, event in submission.events(deadline):
            if isinstance(event, FinishEvent):
                results[index][event.index] = event.completion

    consumer = asyncio.ensure_future(consume())
    watcher = asyncio.ensure_future(_watch_disconnect(request))
    try:
        done, _ = await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if consumer not in done:
            raise ClientGone
        exc = consumer.exception()
        if exc is not None:
            raise as_api_error(exc, settings) from None
    finally:
        for task in (consumer, watcher):
            task.cancel()
        submission.cancel()
    return [[c for c in row if c is not None] for row in results]


async def events_until_done(
    submission: Submission, request: Request, settings: Settings
) -> AsyncIterator[tuple[int, Event]]:
    """Stream a submission's events; stop (and cancel decoding) when the client disconnects.

    Starlette also cancels a streaming response on disconnect; the explicit check covers ASGI
    servers that do not, and ``finally`` covers both. A stream that never started (the client
    left before its first event) runs no ``finally``: the route's dependency that submitted the
    work cancels it then (``owned``).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.request_timeout_s
    next_check = loop.time() + DISCONNECT_POLL_S
    log = request.state.log
    log["streamed_tokens"] = 0
    try:
        async for item in submission.events(deadline):
            if isinstance(item[1], TokenEvent):
                log["streamed_tokens"] += 1
            yield item
            if loop.time() >= next_check:
                next_check = loop.time() + DISCONNECT_POLL_S
                if await request.is_disconnected():
                    log["disconnected"] = True
                    return
    except (GeneratorExit, asyncio.CancelledError):  # the server dropped the stream: client gone
        log["disconnected"] = True
        raise
    finally:
        submission.cancel()


@contextmanager
def owned(submission: Submission) -> Iterator[Submission]:
    """Hold ``submission`` for a route, and cancel it however the response ends.

    A route's dependency with ``yield`` submits the work and yields inside this: FastAPI finishes
    such a dependency after the response is over (sent, abandoned by the client, or cut by
    shutdown), in a shielded scope, so the submission is cancelled even when the event stream
    never started and its own ``finally`` never ran. Cancelling a finished submission does
    nothing. (The work is submitted in the dependency, before the response starts, so a full
    queue or a stopped worker is a 429/503 JSON response, not an in-band event.)
    """
    try:
        yield submission
    finally:
        submission.cancel()


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""What FastAPI sends with an ``EventSourceResponse`` route's stream, for the one route
(``/v1/completions``) that returns its stream itself."""


def event_stream(events: AsyncIterator[ServerSentEvent]) -> EventSourceResponse:
    """A stream returned by a route that answers JSON or SSE depending on the request.

    FastAPI encodes ``ServerSentEvent`` items itself only for a path operation that is an async
    generator with ``response_class=EventSourceResponse`` (``/v1/generate/stream``); a route that
    may also answer a plain JSON body cannot be one, so its events are encoded here with FastAPI's
    ``format_sse_event``, into the same wire format.
    """

    async def encoded() -> AsyncIterator[bytes]:
        async for e in events:
            yield format_sse_event(data_str=e.raw_data, event=e.event)

    return EventSourceResponse(encoded(), headers=SSE_HEADERS)


def sse_content(events: list[str] | None, data: str) -> dict[str, Any]:
    """The ``content`` of a stream's 200 response in OpenAPI: the schema of one event as
    ``itemSchema``, as FastAPI writes it for an ``EventSourceResponse`` route (OpenAPI 3.2's
    keyword; a ``schema`` beside it would describe the whole stream). FastAPI's own item schema is
    generic; this one is merged into it, adding our event names and what ``data`` holds."""
    schema: dict[str, Any] = {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "string", "contentMediaType": "application/json", "description": data}},
    }
    if events:
        schema["properties"]["event"] = {"type": "string", "enum": events}
    return {"text/event-stream": {"itemSchema": schema}}


def sse(data: Any, event: str | None = None) -> ServerSentEvent:
    """One Server-Sent Event: ``data`` as JSON (non-ASCII as is), or a string sent as it is
    (``[DONE]``). Sent as ``raw_data`` so FastAPI does not serialize it a second time."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return ServerSentEvent(raw_data=payload, event=event)


def sse_error(exc: BaseException, settings: Settings, event: str | None = "error") -> ServerSentEvent:
    """An error after the 200 headers went out can only be reported in-band."""
    err = as_api_error(exc, settings)
    return sse(error_body(err.status, err.message, err.param, err.code), event=event)


def token_texts(served: ServedModel, prompt_ids: Sequence[int], ids: Sequence[int], text: str) -> list[str]:
    """Each generated token's text as it reads in ``text``, the completion of ``prompt_ids``
    (``lm.decoding.streaming.token_pieces``: they join to exactly ``text``)."""
    context, _ = served.pipeline.context.frame(prompt_ids)
    return token_pieces(served.pipeline.tokenizer, context, ids, text)


def prompt_token_texts(served: ServedModel, ids: Sequence[int]) -> list[str]:
    """Each prompt token's text, read after the text start as the model reads it."""
    pipe = served.pipeline
    return token_pieces(pipe.tokenizer, pipe.context.start, ids)


def top_maps(served: ServedModel, before: Sequence[int], ids: Sequence[int], pieces: Sequence[str],
             lps: Sequence[float | None], tops: Sequence[Alternatives]) -> list[dict[str, float] | None]:
    """OpenAI's ``top_logprobs``: at each position of ``ids`` (read after ``before``), the most
    likely tokens' texts -- each as it would read there -- and log-probabilities, most likely
    first, then the chosen token's own (its piece) if it was not among them; None where the
    chosen token has no log-probability (a first token with no text start). Two alternatives
    that read the same keep the likelier."""
    tokenizer = served.pipeline.tokenizer
    seq = list(before[-PROMPT_CONTEXT:])  # the window an alternative is read in (not the whole context)
    out: list[dict[str, float] | None] = []
    for token, piece, lp, top in zip(ids, pieces, lps, tops, strict=True):
        entry: dict[str, float] | None = None
        if lp is not None:
            entry = {}
            alternatives = [(alt, v) for alt, value in top if (v := finite(value)) is not None]
            texts = iter(candidate_pieces(tokenizer, seq, [alt for alt, _ in alternatives if alt != token]))
            for alt, v in alternatives:
                if alt != token:
                    entry.setdefault(next(texts), v)
                else:
                    entry[piece] = lp  # in its place among the likeliest (over one that reads the same)
            entry[piece] = lp  # the chosen token's own, always (appended when not among them)
        out.append(entry)
        seq.append(token)
    return out


def now() -> int:
    return int(time.time())
