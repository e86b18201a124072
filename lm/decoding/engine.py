"""Step-wise batched decoding: the one loop behind ``generate()``, streaming and the server.

A ``DecodeSession`` holds the requests being decoded. ``add`` queues a request at any time;
``step`` runs one forward for every active row and returns what happened (a token per row, a
finished completion per row that ended). Greedy and sampled requests share one batch: a request
added between steps joins it at the next step (continuous batching) and a finished row leaves
it at once. Beam requests decode in a second batch of their own, since each of their steps
reorders rows.

Results do not depend on batching: rows are left-padded with masks (the models guarantee a
padded batch equals each row alone) and each sampled row draws from its own generator, seeded
from the request's ``seed`` and the row's index.

Every prompt is conditioned on the checkpoint's text start (``lm.context``: the line break the
model was trained to begin texts after; an empty prompt means "start of a text"), which is never
penalised or banned, and a Transformer's window is the context length it was trained on.

Nothing a request asks for can break another: constrained logits are cleaned of NaN and +inf
before anything ranks or draws from them, a row whose every token is banned ends on its own
(``finish_reason`` ``"banned"``), chosen ids are always in the vocabulary, and a request ends
with exactly ``num_return_sequences`` ``FinishEvent``s followed by a ``DoneEvent``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Hashable
from numbers import Integral

import torch
from torch import nn

from lm.context import TextContext
from lm.decoding.batch import Request, Row, RowBatch
from lm.decoding.beam import BeamSearch
from lm.decoding.params import (
    Alternatives,
    Completion,
    DoneEvent,
    Event,
    FinishEvent,
    GenerationParams,
    ParamError,
    TokenEvent,
)
from lm.decoding.sampling import RowSampler, alternatives, sanitize
from lm.decoding.streaming import TextStream
from lm.models import model_device

log = logging.getLogger(__name__)

__all__ = ["DecodeSession"]


class DecodeSession:
    """Decode many requests together, one step at a time.

    Not thread-safe: drive it from one thread (the server's scheduler does).
    """

    def __init__(self, model: nn.Module, tokenizer, *, context: TextContext | None = None,
                 device: torch.device | str | None = None, max_batch_rows: int = 64) -> None:
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        self.model = model
        self.tokenizer = tokenizer
        self.context = context or TextContext.derive(tokenizer, getattr(model, "max_context", None))
        self.device = torch.device(device) if device is not None else model_device(model)
        self.max_batch_rows = max_batch_rows
        self._eos = getattr(tokenizer, "eos_id", None)
        self._requests: dict[Hashable, Request] = {}
        self._waiting: list[Request] = []
        self._done: list[Event] = []
        window = self.context.max_length
        self._sampled = RowBatch(model, self.device, window)
        self._sampler: RowSampler | None = None
        self._sampler_version = -1
        self._beams = BeamSearch(RowBatch(model, self.device, window), tokenizer)

    @property
    def active(self) -> int:
        """Requests added and not yet finished or cancelled."""
        return len(self._requests)

    @property
    def rows(self) -> int:
        """Batch rows decoding now (requests waiting for room are not counted)."""
        return len(self._sampled) + len(self._beams.batch)

    def add(self, request_id: Hashable, prompt_ids: list[int], params: GenerationParams) -> None:
        """Queue a request; it starts at the next ``step`` if there are rows free."""
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already active")
        vocab = self.tokenizer.vocab_size
        bad = [t for t in prompt_ids if isinstance(t, bool) or not isinstance(t, Integral) or not 0 <= t < vocab]
        if bad:
            raise ParamError("prompt", f"prompt token ids must be integers in [0, {vocab}), got {bad[0]!r}")
        prompt_ids = [int(t) for t in prompt_ids]
        params.check_vocab(vocab)
        if params.rows > self.max_batch_rows:
            name = "num_beams" if params.strategy == "beam" else "num_return_sequences"
            raise ParamError(name, f"{name} must be <= {self.max_batch_rows} (max_batch_rows), "
                                   f"got {params.rows}")
        context, start = self.context.frame(prompt_ids)
        if not context:
            raise ParamError("prompt", "the prompt is empty and this model has no start-of-text context "
                                       "(its tokenizer has no line-break token); give a prompt")
        request = Request(request_id, params, len(prompt_ids), context, start)
        self._requests[request_id] = request
        self._waiting.append(request)

    def cancel(self, request_id: Hashable) -> None:
        """Forget a request (e.g. its client went away); its rows leave the batch now."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return
        if request in self._waiting:
            self._waiting.remove(request)
        self._sampled.drop(request)
        self._beams.drop(request)

    @torch.inference_mode()
    def step(self) -> list[Event]:
        """One decode step for every active row; returns the events in row order."""
        self._admit()
        events, self._done = self._done, []
        events += self._step_sampled()
        for event in self._beams.step():
            events.append(event)
            self._finish(event, events)
        return events

    def _admit(self) -> None:
        """Move waiting requests into the batches while rows are free (first come, first served)."""
        # A beam request holds one row until its first step forks it: count the rows it will use.
        occupied = len(self._sampled) + sum(
            r.params.num_beams for r in self._requests.values() if r.params.strategy == "beam" and r not in self._waiting)
        while self._waiting and occupied + self._waiting[0].params.rows <= self.max_batch_rows:
            request = self._waiting.pop(0)
            params = request.params
            occupied += params.rows
            log.debug("admitting request %r (%s, %d rows)", request.id, params.strategy, params.rows)
            request.open_rows = params.num_return_sequences
            if params.max_new_tokens == 0:
                for index in range(params.num_return_sequences):
                    event = FinishEvent(request.id, index, Completion("", [], [], 0.0, "length", request.prompt_tokens))
                    self._done.append(event)
                    self._finish(event, self._done)
            elif params.strategy == "beam":
                self._beams.admit(request)
            else:
                self._sampled.join([
                    Row(request, index, list(request.context),
                        stream=TextStream(self.tokenizer, request.context, params.stop),
                        rng=random.Random(f"{params.seed}/{index}") if params.seed is not None else random.Random())
                    for index in range(params.num_return_sequences)
                ])

    def _finish(self, event: FinishEvent, events: list[Event]) -> None:
        """Count a finished sequence; after the request's last one, append its ``DoneEvent``."""
        request = self._requests.get(event.request_id)
        if request is not None:
            request.open_rows -= 1
            if request.open_rows <= 0:
                del self._requests[event.request_id]
                events.append(DoneEvent(event.request_id))

    def _step_sampled(self) -> list[Event]:
        batch = self._sampled
        if not len(batch):
            return []
        logits = batch.forward().float()  # [B, V]
        rows = batch.rows
        if self._sampler is None or self._sampler_version != batch.version:
            self._sampler = RowSampler([r.request.params for r in rows], self.device)
            self._sampler_version = batch.version
        sampler = self._sampler
        seen = batch.seen_mask(logits.shape[1]) if sampler.any_penalty else batch.seen
        histories = [r.tokens[r.request.start :] for r in rows] if sampler.any_ngram else ()
        logits = sanitize(sampler.constrain(logits, seen, histories))
        top, best = logits.max(-1)
        alive = top > float("-inf")  # False: every token is banned for that row
        uniforms = None
        if sampler.any_sampled:
            uniforms = torch.tensor([r.rng.random() if s else 0.0 for r, s in zip(rows, sampler.sampled, strict=True)],
                                    dtype=torch.float64, device=self.device)
        tokens = sampler.choose(logits, uniforms, best=best, top=top, alive=alive)
        # One fused log-softmax pass (cheaper than logsumexp's several) for the chosen tokens.
        logp = logits.log_softmax(-1)
        logprobs = logp.gather(1, tokens[:, None]).squeeze(1)
        tops = alternatives(logp, sampler.top_logprobs) if sampler.max_top_logprobs else [()] * len(rows)
        batch.mark_seen(tokens)
        batch.pending = tokens

        events: list[Event] = []
        keep: list[int] = []
        for i, (row, token, logprob, top, ok) in enumerate(
                zip(rows, tokens.tolist(), logprobs.tolist(), tops, alive.tolist(), strict=True)):
            finish = self._advance(row, token, logprob, top, events) if ok else self._exhausted(row, events)
            if finish is not None:
                self._finish(finish, events)
            else:
                keep.append(i)
        if len(keep) < len(rows):
            batch.keep(keep)
        return events

    def _exhausted(self, row: Row, events: list[Event]) -> FinishEvent:
        """End a row that has no token left to choose; held-back text goes out with the finish."""
        stream = row.stream
        assert stream is not None
        tail = stream.finish()
        completion = Completion(stream.text, row.generated, row.logprobs, sum(row.logprobs), "banned",
                                row.request.prompt_tokens, row.top)
        event = FinishEvent(row.request.id, row.index, completion, tail)
        events.append(event)
        return event

    def _advance(self, row: Row, token: int, logprob: float, top: Alternatives,
                 events: list[Event]) -> FinishEvent | None:
        """Append a chosen token to a greedy/sampled row; its ``FinishEvent`` if it has finished."""
        request, params, stream = row.request, row.request.params, row.stream
        assert stream is not None
        row.tokens.append(token)
        row.logprobs.append(logprob)
        if params.top_logprobs:
            row.top.append(top)
        reason = None
        if token == self._eos and params.stop_at_eos:
            reason, delta = "eos", stream.finish()
        else:
            delta = stream.push(token)
            if stream.stopped:
                reason = "stop"
            elif len(row.logprobs) >= params.max_new_tokens:
                reason, delta = "length", delta + stream.finish()
        events.append(TokenEvent(request.id, row.index, delta, token, logprob, top))
        if reason is None:
            return None
        completion = Completion(stream.text, row.generated, row.logprobs, sum(row.logprobs), reason, request.prompt_tokens,
                                row.top)
        event = FinishEvent(request.id, row.index, completion)
        events.append(event)
        return event
