"""Continuous batching: one decode thread per model, fed by a thread-safe inbox.

The event loop never runs model code. A request becomes a ``Ticket`` (an ``asyncio.Queue`` the
worker fills through ``loop.call_soon_threadsafe``); the worker owns the model's
``DecodeSession`` and, between two decode steps, adds newly arrived requests to the running
batch and drops cancelled ones. So a request that arrives while others decode starts at the
next step instead of waiting for the whole batch to finish, and throughput grows with
concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from lm.engine import DecodeSession, FinishEvent, TokenEvent
from lm.generate import GenerationParams
from service.metrics import Metrics

log = logging.getLogger(__name__)

Event = TokenEvent | FinishEvent


class QueueFull(Exception):
    """The model already holds ``max_queue`` requests; the client should retry later."""


class SchedulerStopped(Exception):
    """The server is shutting down (or the worker died); the request was not completed."""


class GenerationFailed(Exception):
    """The decode step raised; the message is logged server-side, not sent to the client."""


def sequences_for(params: GenerationParams) -> int:
    """How many ``FinishEvent``s complete a request."""
    return params.num_return_sequences


@dataclass(eq=False)
class Ticket:
    """One prompt of a request, as the worker sees it."""

    request_id: str
    index: int
    prompt_ids: list[int]
    params: GenerationParams
    submission: Submission
    finished: int = 0

    @property
    def expected(self) -> int:
        return sequences_for(self.params)


class Submission:
    """The prompts of one HTTP request in flight, and the queue their events arrive on.

    Only the event loop reads ``queue``; only the worker fills it (``call_soon_threadsafe``).
    """

    def __init__(self, scheduler: Scheduler, loop: asyncio.AbstractEventLoop, *, stream: bool) -> None:
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
        remaining = {t.index: t.expected for t in self.tickets}
        while any(remaining.values()):
            timeout = None if deadline is None else max(0.0, deadline - self.loop.time())
            index, item = await asyncio.wait_for(self.queue.get(), timeout)
            if isinstance(item, BaseException):
                self._open.discard(index)
                raise item
            for event in item:
                if isinstance(event, FinishEvent):
                    remaining[index] -= 1
                    if not remaining[index]:
                        self._open.discard(index)
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


def _put_all(items: list[tuple[Ticket, list[Event] | BaseException]]) -> None:
    """Runs on the event loop: fill each request's queue."""
    for ticket, item in items:
        ticket.submission.queue.put_nowait((ticket.index, item))


@dataclass
class _Cancel:
    request_id: str


_STOP = object()


class Scheduler:
    """Owns one model's ``DecodeSession`` on a dedicated thread.

    ``max_queue`` bounds the requests held at once (decoding plus waiting for rows), so memory
    and latency stay bounded and overload turns into 429s instead of timeouts.
    """

    def __init__(
        self,
        name: str,
        session_factory: Callable[[int], DecodeSession],
        *,
        max_queue: int,
        max_batch_rows: int,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self._session_factory = session_factory
        self.max_queue = max_queue
        self.max_batch_rows = max_batch_rows
        self.metrics = metrics
        self._inbox: queue.SimpleQueue[Ticket | _Cancel | object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._inflight = 0
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- event-loop side -------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def depth(self) -> int:
        return self._inflight

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"decode-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the current step, fail what is left with ``SchedulerStopped`` and join."""
        self._stopping = True
        self._inbox.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(
        self, requests: list[tuple[list[int], GenerationParams]], request_id: str, *, stream: bool = True
    ) -> Submission:
        """Queue all of a request's prompts, or none of them (``QueueFull``, ``SchedulerStopped``).

        With ``stream=False`` only finish events are delivered.
        """
        if not self.alive:
            raise SchedulerStopped(f"model {self.name!r} is not running")
        with self._lock:
            if self._inflight + len(requests) > self.max_queue:
                raise QueueFull(
                    f"model {self.name!r} already holds {self._inflight} request(s); the limit is "
                    f"{self.max_queue} (max_queue)"
                )
            self._inflight += len(requests)
            self.metrics.queue_depth.labels(self.name).set(self._inflight)
        submission = Submission(self, asyncio.get_running_loop(), stream=stream)
        for i, (ids, params) in enumerate(requests):
            ticket = Ticket(f"{request_id}/{i}/{next(self._ids)}", i, ids, params, submission)
            submission.add(ticket)
        for ticket in submission.tickets:
            self._inbox.put(ticket)
        return submission

    def cancel(self, request_id: str) -> None:
        self._inbox.put(_Cancel(request_id))

    # -- worker side -----------------------------------------------------------------------

    def _release(self, n: int = 1) -> None:
        with self._lock:
            self._inflight -= n
            self.metrics.queue_depth.labels(self.name).set(self._inflight)

    @staticmethod
    def _deliver(ticket: Ticket, item: list[Event] | BaseException) -> None:
        Scheduler._deliver_all([(ticket, item)])

    @staticmethod
    def _deliver_all(items: list[tuple[Ticket, list[Event] | BaseException]]) -> None:
        """Hand events to their requests' queues with one wake-up of each event loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Ticket, list[Event] | BaseException]]] = {}
        for ticket, item in items:
            by_loop.setdefault(ticket.submission.loop, []).append((ticket, item))
        for loop, batch in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
                loop.call_soon_threadsafe(_put_all, batch)

    def _run(self) -> None:
        session = self._session_factory(self.max_batch_rows)
        active: dict[str, Ticket] = {}
        stop = False
        while not stop:
            commands: list[object] = []
            if not active:
                commands.append(self._inbox.get())  # idle: sleep until there is work
            while True:
                try:
                    commands.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for command in commands:
                if command is _STOP:
                    stop = True
                elif isinstance(command, Ticket):
                    self._add(session, command, active)
                elif isinstance(command, _Cancel) and active.pop(command.request_id, None) is not None:
                    session.cancel(command.request_id)
                    self._release()
            if active and not stop:
                session = self._step(session, active)
        stopped = SchedulerStopped("the server is shutting down")
        for ticket in active.values():
            self._deliver(ticket, stopped)
        self._release(len(active))
        self.metrics.batch_rows.labels(self.name).set(0)

    def _add(self, session: DecodeSession, ticket: Ticket, active: dict[str, Ticket]) -> None:
        """Hand a request to the session; it joins the batch at the next step when rows are free."""
        try:
            session.add(ticket.request_id, ticket.prompt_ids, ticket.params)
        except Exception as exc:  # a request the engine refuses fails alone
            log.info("model %s refused request %s: %s", self.name, ticket.request_id, exc)
            self._deliver(ticket, exc)
            self._release()
            return
        active[ticket.request_id] = ticket
        self.metrics.prompt_tokens.labels(self.name).inc(len(ticket.prompt_ids))

    def _step(self, session: DecodeSession, active: dict[str, Ticket]) -> DecodeSession:
        """One decode step for the whole batch; route each event to its request."""
        start = time.perf_counter()
        try:
            events = session.step()
        except Exception:
            log.exception("decode step failed on model %s; failing %d request(s)", self.name, len(active))
            failure = GenerationFailed("generation failed")
            for ticket in active.values():
                self._deliver(ticket, failure)
            self._release(len(active))
            active.clear()
            return self._session_factory(self.max_batch_rows)
        self.metrics.step_seconds.labels(self.name).observe(time.perf_counter() - start)
        by_request: dict[str, list[Event]] = {}
        tokens = 0
        for event in events:
            ticket = active.get(event.request_id)
            if ticket is None:  # cancelled after this step began
                continue
            by_request.setdefault(event.request_id, []).append(event)
            if isinstance(event, TokenEvent):
                tokens += 1
            else:
                if ticket.params.strategy == "beam":
                    tokens += len(event.completion.token_ids)
                ticket.finished += 1
        deliveries: list[tuple[Ticket, list[Event] | BaseException]] = []
        for request_id, batch in by_request.items():
            ticket = active[request_id]
            if not ticket.submission.stream:
                batch = [e for e in batch if isinstance(e, FinishEvent)]
            if batch:
                deliveries.append((ticket, batch))
            if ticket.finished >= ticket.expected:
                del active[request_id]
                self._release()
        self._deliver_all(deliveries)
        if tokens:
            self.metrics.tokens_generated.labels(self.name).inc(tokens)
        self.metrics.batch_size.labels(self.name).observe(len(by_request))
        self.metrics.batch_rows.labels(self.name).set(session.rows)
        return session
