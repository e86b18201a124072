"""What a request is while the decode worker holds it: its ``Ticket`` per prompt, its
``Submission`` (the queue the worker fills from its thread and the event loop reads), a scoring
``ScoreTicket``, and the errors a request can end with (``service.scheduler`` runs them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from lm.decoding.params import DoneEvent, FinishEvent, GenerationParams, TokenEvent
from lm.score import ScoreJob


class Canceller(Protocol):
    """What a submission needs of its scheduler (``service.scheduler.Scheduler``)."""

    def cancel(self, request_id: str) -> None: ...

Event = TokenEvent | FinishEvent | DoneEvent


class ReplayDiverged(Exception):
    """A request replayed alone did not repeat the tokens its client already has."""


class QueueFull(Exception):
    """The model already holds ``max_queue`` requests; the client should retry later."""


class SchedulerStopped(Exception):
    """The server is shutting down (or the worker died); the request was not completed."""


class GenerationFailed(Exception):
    """The decode step raised; the message is logged server-side, not sent to the client."""


@dataclass(eq=False)
class Ticket:
    """One prompt of a request, as the worker sees it."""

    request_id: str
    index: int
    prompt_ids: list[int]
    params: GenerationParams
    submission: Submission
    sent_tokens: dict[int, list[int]] = field(default_factory=dict)
    """The token ids delivered per row: a replay (``Scheduler``'s quarantine) skips these."""
    sent_finished: set[int] = field(default_factory=set)
    """Rows whose finish was delivered."""
    replayed_tokens: dict[int, int] = field(default_factory=dict)
    """Token events a replay has produced so far per row."""

    def record(self, events: list[Event]) -> None:
        """Count what is about to be delivered."""
        for event in events:
            if isinstance(event, TokenEvent):
                self.sent_tokens.setdefault(event.index, []).append(event.token_id)
            elif isinstance(event, FinishEvent):
                self.sent_finished.add(event.index)

    def unsent(self, events: list[Event]) -> list[Event]:
        """``events`` of a replay, less those the request already has (a deterministic replay
        repeats them, in order); counts what is left as delivered. ``ReplayDiverged`` if the
        replay chose another token than the client has (kernels that differ by batch size)."""
        seen: dict[int, int] = {}
        out: list[Event] = []
        for event in events:
            if isinstance(event, TokenEvent):
                seen[event.index] = seen.get(event.index, 0) + 1
                position = self.replayed_tokens.get(event.index, 0) + seen[event.index] - 1
                sent = self.sent_tokens.get(event.index, [])
                if position < len(sent):
                    if sent[position] != event.token_id:
                        raise ReplayDiverged(f"row {event.index} chose another token at {position} on replay")
                    continue
            elif isinstance(event, FinishEvent) and event.index in self.sent_finished:
                continue
            out.append(event)
        for index, n in seen.items():
            self.replayed_tokens[index] = self.replayed_tokens.get(index, 0) + n
        self.record(out)
        return out

    @property
    def expected(self) -> int:
        """The completions this prompt returns."""
        return self.params.num_return_sequences


@dataclass(eq=False)
class ScoreTicket:
    """A scoring request, as the worker sees it: its job and the future its result resolves."""

    request_id: str
    job: ScoreJob
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class Submission:
    """The prompts of one HTTP request in flight, and the queue their events arrive on.

    Only the event loop reads ``queue``; only the worker fills it (``call_soon_threadsafe``).
    """

    def __init__(self, scheduler: Canceller, loop: asyncio.AbstractEventLoop, *, stream: bool) -> None:
        self.scheduler = scheduler
        self.loop = loop
        self.stream = stream
        """Whether token events are wanted; without them the loop wakes once per sequence, not per token."""
        self.queue: asyncio.Queue[tuple[int, list[Event] | BaseException]] = asyncio.Queue()
        self.tickets: list[Ticket] = []
        self._open: set[int] = set()

    async def events(self, deadline: float | None = None) -> AsyncIterator[tuple[int, Event]]:
        """``(prompt_index, event)`` in arrival order until every sequence has finished.

        Raises ``TimeoutError`` once ``deadline`` (``loop.time()`` clock) passes, or the
        exception the worker delivered for a prompt (the request then fails as a whole).
        """
        while self._open:
            timeout = None if deadline is None else max(0.0, deadline - self.loop.time())
            index, item = await asyncio.wait_for(self.queue.get(), timeout)
            if isinstance(item, BaseException):
                self._open.discard(index)
                raise item
            for event in item:
                if isinstance(event, DoneEvent):
                    self._open.discard(index)
                else:
                    yield index, event

    def add(self, ticket: Ticket) -> None:
        self.tickets.append(ticket)
        self._open.add(ticket.index)

    def cancel(self) -> None:
        """Stop decoding whatever is unfinished (client gone, timeout, error). Idempotent."""
        for ticket in self.tickets:
            if ticket.index in self._open:
                self._open.discard(ticket.index)
                self.scheduler.cancel(ticket.request_id)
