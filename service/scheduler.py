"""Continuous batching: one decode thread per model, fed by a thread-safe inbox.

The event loop never runs model code. A request becomes a ``Ticket`` (an ``asyncio.Queue`` the
worker fills through ``loop.call_soon_threadsafe``); the worker owns the model's
``DecodeSession`` and, between two decode steps, adds newly arrived requests to the running
batch and drops cancelled ones. So a request that arrives while others decode starts at the
next step instead of waiting for the whole batch to finish, and throughput grows with
concurrency. A prompt is complete when the engine says so (its ``DoneEvent``), never by
counting finish events.

Scoring (``/v1/perplexity``, ``echo`` with ``logprobs``) runs on the same thread, under the same
``max_queue`` bound: a ``ScoreJob`` advances one bounded forward per loop turn, between decode
steps, so a long text neither stalls generation nor outlives its client or its timeout (a
cancelled job stops at its next forward). A scoring job that raises fails only its own request.

A decode step that raises cannot say whose row broke it, so no request is failed for it on
suspicion: each request of that batch goes on alone in a session of its own (the quarantine),
replayed from its start -- every sampled request is seeded at submission, so a replay repeats
exactly what its client already has, and that part is skipped -- and only a request whose own
replay fails gets the error. The batch starts afresh for new requests meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lm.decoding.engine import DecodeSession
from lm.decoding.params import DoneEvent, GenerationParams, TokenEvent
from lm.score import ScoreJob
from service.metrics import Metrics
from service.tickets import (
    Event,
    GenerationFailed,
    QueueFull,
    ReplayDiverged,
    SchedulerStopped,
    ScoreTicket,
    Submission,
    Ticket,
)

__all__ = ["Event", "GenerationFailed", "QueueFull", "Scheduler", "SchedulerStopped", "Submission", "Ticket"]

log = logging.getLogger(__name__)



def _put_all(items: list[tuple[Ticket, list[Event] | BaseException]]) -> None:
    """Runs on the event loop: fill each request's queue."""
    for ticket, item in items:
        ticket.submission.queue.put_nowait((ticket.index, item))


@dataclass
class _Cancel:
    request_id: str


def _resolve(future: asyncio.Future, result: object) -> None:
    """Runs on the event loop: settle a scoring request's future (unless it was abandoned)."""
    if not future.done():
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


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
        self._inbox: queue.SimpleQueue[Ticket | ScoreTicket | _Cancel | object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._inflight = 0
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._quarantine: dict[str, DecodeSession | None] = {}
        """Requests replaying alone after a step of their batch failed (worker thread only)."""
        self._replaying: dict[str, Ticket] = {}

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
        self._reserve(len(requests))
        submission = Submission(self, asyncio.get_running_loop(), stream=stream)
        for i, (ids, params) in enumerate(requests):
            if params.samples and params.seed is None:  # replayable (a quarantine), still random
                params = dataclasses.replace(params, seed=random.getrandbits(53))
            ticket = Ticket(f"{request_id}/{i}/{next(self._ids)}", i, ids, params, submission)
            submission.add(ticket)
        for ticket in submission.tickets:
            self._inbox.put(ticket)
        return submission

    def _reserve(self, n: int) -> None:
        if not self.alive:
            raise SchedulerStopped(f"model {self.name!r} is not running")
        with self._lock:
            if self._inflight + n > self.max_queue:
                raise QueueFull(
                    f"model {self.name!r} already holds {self._inflight} request(s); the limit is "
                    f"{self.max_queue} (max_queue)"
                )
            self._inflight += n
            self.metrics.queue_depth.labels(self.name).set(self._inflight)

    async def score(self, job: ScoreJob, request_id: str) -> ScoreJob:
        """Run a scoring job on the worker thread, between decode steps; returns it finished.

        Counts against ``max_queue`` like a prompt (``QueueFull``, ``SchedulerStopped``). If the
        caller is cancelled (timeout, client gone) the job stops at its next forward.
        """
        self._reserve(1)
        loop = asyncio.get_running_loop()
        ticket = ScoreTicket(f"{request_id}/score/{next(self._ids)}", job, loop, loop.create_future())
        self._inbox.put(ticket)
        try:
            return await ticket.future
        except BaseException:  # cancelled (timeout, client gone; asyncio cancels the future too) or failed
            self.cancel(ticket.request_id)  # a no-op for a job that already ended
            raise

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
        scoring: dict[str, ScoreTicket] = {}
        stop = False
        while not stop:
            commands: list[object] = []
            if not active and not scoring and not self._quarantine:
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
                elif isinstance(command, ScoreTicket):
                    scoring[command.request_id] = command
                elif isinstance(command, _Cancel):
                    if active.pop(command.request_id, None) is not None:
                        session.cancel(command.request_id)
                        self._release()
                        self.metrics.batch_rows.labels(self.name).set(session.rows)  # its rows left now
                    elif scoring.pop(command.request_id, None) is not None or \
                            self._drop_quarantined(command.request_id):
                        self._release()
            if stop:
                break
            if active:
                session = self._step(session, active)
            if self._quarantine:
                self._step_quarantined()
            if scoring:
                self._score_step(scoring)
        stopped = SchedulerStopped("the server is shutting down")
        for ticket in [*active.values(), *self._replaying.values()]:
            self._deliver(ticket, stopped)
        for score in scoring.values():
            self._settle(score, stopped)
        self._release(len(active) + len(scoring) + len(self._replaying))
        self.metrics.batch_rows.labels(self.name).set(0)

    @staticmethod
    def _settle(ticket: ScoreTicket, result: object) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            ticket.loop.call_soon_threadsafe(_resolve, ticket.future, result)

    def _score_step(self, scoring: dict[str, ScoreTicket]) -> None:
        """One forward of the oldest scoring job; a job that raises fails only its own request."""
        request_id, ticket = next(iter(scoring.items()))
        try:
            done = ticket.job.step()
        except Exception:
            log.exception("scoring failed on model %s (request %s)", self.name, request_id)
            done, result = True, GenerationFailed("scoring failed")
        else:
            result = ticket.job
        if done:
            del scoring[request_id]
            self._release()
            self._settle(ticket, result)

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

    def _fail(self, ticket: Ticket) -> None:
        self._deliver(ticket, GenerationFailed("generation failed"))
        self._release()

    def _alone(self, ticket: Ticket) -> DecodeSession | None:
        """A session of its own for ``ticket``, replaying it from its start (its parameters are
        deterministic: the server seeds every sampled request); None if even that fails."""
        try:
            session = self._session_factory(max(1, ticket.params.rows))
            session.add(ticket.request_id, ticket.prompt_ids, ticket.params)
        except Exception:
            log.exception("model %s: request %s failed to restart alone", self.name, ticket.request_id)
            self._fail(ticket)
            return None
        self._replaying[ticket.request_id] = ticket
        return session

    def _step_quarantined(self) -> None:
        """One step of each request replaying alone; a request whose own step fails fails alone,
        the others deliver what their clients do not have yet."""
        for request_id, session in list(self._quarantine.items()):
            ticket = self._replaying.get(request_id)
            if session is None or ticket is None:
                self._quarantine.pop(request_id, None)
                continue
            try:
                events = session.step()
            except Exception:
                log.exception("model %s: request %s fails alone too; failing it", self.name, request_id)
                self._drop_quarantined(request_id)
                self._fail(ticket)
                continue
            mine = [e for e in events if e.request_id == request_id]
            if not ticket.submission.stream:
                mine = [e for e in mine if not isinstance(e, TokenEvent)]
            try:
                fresh = ticket.unsent(mine)
            except ReplayDiverged as exc:  # it cannot go on seamlessly: it fails, alone
                log.warning("model %s: request %s: %s", self.name, request_id, exc)
                self._drop_quarantined(request_id)
                self._fail(ticket)
                continue
            if fresh:
                self._deliver(ticket, fresh)
            if any(isinstance(e, DoneEvent) for e in mine):
                self._drop_quarantined(request_id)
                self._release()

    def _drop_quarantined(self, request_id: str) -> bool:
        self._replaying.pop(request_id, None)
        return self._quarantine.pop(request_id, None) is not None

    def _step(self, session: DecodeSession, active: dict[str, Ticket]) -> DecodeSession:
        """One decode step for the whole batch; route each event to its request."""
        start = time.perf_counter()
        try:
            events = session.step()
        except Exception:
            if len(active) == 1:  # it was this request's own
                log.exception("decode step failed on model %s; failing its one request", self.name)
                self._fail(next(iter(active.values())))
            else:  # someone's: each request goes on alone, replayed, and only a failing one fails
                log.exception("decode step failed on model %s; replaying its %d requests one by one",
                              self.name, len(active))
                for ticket in active.values():
                    self._quarantine[ticket.request_id] = self._alone(ticket)
            active.clear()
            return self._session_factory(self.max_batch_rows)
        self.metrics.step_seconds.labels(self.name).observe(time.perf_counter() - start)
        by_request: dict[str, list[Event]] = {}
        finished: list[str] = []
        tokens = 0
        for event in events:
            ticket = active.get(event.request_id)
            if ticket is None:  # cancelled after this step began
                continue
            by_request.setdefault(event.request_id, []).append(event)
            if isinstance(event, TokenEvent):
                tokens += 1
            elif isinstance(event, DoneEvent):
                finished.append(event.request_id)
            elif ticket.params.strategy == "beam":
                tokens += len(event.completion.token_ids)
        deliveries: list[tuple[Ticket, list[Event] | BaseException]] = []
        for request_id, batch in by_request.items():
            ticket = active[request_id]
            if not ticket.submission.stream:
                batch = [e for e in batch if not isinstance(e, TokenEvent)]
            if batch:
                ticket.record(batch)
                deliveries.append((ticket, batch))
        for request_id in finished:
            del active[request_id]
            self._release()
        self._deliver_all(deliveries)
        if tokens:
            self.metrics.tokens_generated.labels(self.name).inc(tokens)
        self.metrics.batch_size.labels(self.name).observe(len(by_request))
        self.metrics.batch_rows.labels(self.name).set(session.rows)
        return session
