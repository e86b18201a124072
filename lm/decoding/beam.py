"""Beam search over a ``RowBatch``: each request keeps ``num_beams`` rows.

Every step each request's beams are extended by their ``2 * num_beams`` best continuations
(as in HF's beam search, so ``<eos>`` candidates can finish while enough beams go on).
A candidate ending in ``<eos>`` or completing a stop string becomes a finished hypothesis if it
ranks among the best ``num_beams``; the others become the next beams, and the batch reorders its
state with one ``select``. Hypotheses are ranked by sum of log-probabilities divided by
length ** ``length_penalty`` (length counts generated tokens, the final ``<eos>`` included).

A request is done when it has ``num_beams`` hypotheses and either ``early_stopping`` is set or
no running beam can still beat the worst of them at its current length (HF's heuristic), or
when it reaches ``max_new_tokens`` (its running beams then join the hypotheses), or when no
beam has a token left to choose (bans; they join as ``"banned"``). It always returns exactly
``num_return_sequences`` results: when bans left fewer distinct hypotheses, the best ones are
repeated.

Ranking never overflows: ``rank_key`` orders hypotheses exactly as ``sum / length ** penalty``
does, computed in log space, so any finite ``length_penalty`` is safe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lm.decoding.batch import Request, Row, RowBatch
from lm.decoding.params import Alternatives, Completion, FinishEvent
from lm.decoding.sampling import NEG_INF, RowSampler, alternatives, sanitize
from lm.decoding.streaming import TextStream


def rank_key(logprob_sum: float, length: int, length_penalty: float) -> float:
    """A key that orders hypotheses as ``logprob_sum / length ** length_penalty`` (higher is
    better) without computing the power: for a sum < 0 that score is
    ``-exp(log(-sum) - penalty * log(length))``, so ``penalty * log(length) - log(-sum)`` is
    increasing in it, and finite or +-inf for every finite penalty (never an overflow error)."""
    if logprob_sum >= 0 or length == 0:
        return math.inf  # a score of 0: nothing ranks above it
    if logprob_sum == -math.inf:
        return -math.inf
    return length_penalty * math.log(length) - math.log(-logprob_sum)


@dataclass
class Hypothesis:
    score: float
    """``rank_key`` of the hypothesis (its length-normalised log-probability's order)."""
    tokens: list[int]
    logprobs: list[float]
    reason: str
    top: list[Alternatives] = field(default_factory=list)


class BeamSearch:
    """The beam requests of a session, decoding together in ``batch``."""

    def __init__(self, batch: RowBatch, tokenizer) -> None:
        self.batch = batch
        self.tokenizer = tokenizer
        self.eos = getattr(tokenizer, "eos_id", None)
        self.hypotheses: dict[Request, list[Hypothesis]] = {}
        """Each running request's finished hypotheses, best first."""
        self._sampler_cache: tuple[list[Request], RowSampler] | None = None

    def admit(self, request: Request) -> None:
        """Start a request: one row runs the prompt; the first step forks it into beams."""
        self.hypotheses[request] = []
        stream = TextStream(self.tokenizer, request.context, request.params.stop) if request.params.stop else None
        self.batch.join([Row(request, 0, list(request.context), stream=stream)])

    def drop(self, request: Request) -> None:
        """Forget a request (cancelled): its rows leave the batch, its hypotheses are dropped."""
        self.batch.drop(request)
        self.hypotheses.pop(request, None)

    def _sampler_for(self, rows: list, device: torch.device) -> RowSampler:
        """The constraints of these rows' requests, rebuilt only when the requests change (beam
        rows are reordered every step; the per-row tensors follow the requests, not the rows)."""
        requests = [r.request for r in rows]
        cached = self._sampler_cache
        if cached is None or len(cached[0]) != len(requests) or any(a is not b for a, b in zip(cached[0], requests, strict=True)):
            self._sampler_cache = (requests, RowSampler([q.params for q in requests], device))
        return self._sampler_cache[1]

    def step(self) -> list[FinishEvent]:
        """Extend every beam by one token; returns the results of requests that finished."""
        batch = self.batch
        if not len(batch):
            return []
        logits = batch.forward().float()  # [R, V]
        rows = batch.rows
        if any(r.request.params.constrains for r in rows):
            sampler = self._sampler_for(rows, batch.device)
            seen = batch.seen_mask(logits.shape[1]) if sampler.any_penalty else None
            logits = sampler.constrain(logits, seen, [r.tokens[r.request.start :] for r in rows])
        logits = sanitize(logits)
        alive = logits.max(-1, keepdim=True).values > NEG_INF
        # A row with every token banned has no distribution: -inf everywhere, not NaN.
        logp = torch.where(alive, logits.log_softmax(-1), NEG_INF)

        groups: dict[Request, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row.request, []).append(i)
        index: list[int] = []
        children: list[Row] = []
        events: list[FinishEvent] = []
        for request, pos in groups.items():
            if pos[-1] - pos[0] + 1 == len(pos):
                request_logp = logp[pos[0] : pos[-1] + 1]
            else:
                request_logp = logp.index_select(0, torch.tensor(pos, device=logp.device))
            beams = [rows[i] for i in pos]
            kids, parents = self._expand(request, beams, request_logp)
            if kids:
                index += [pos[p] for p in parents]
                children += kids
            else:
                events += self._finalize(request, beams)
        batch.keep(index, children)
        if batch.seen is not None and children:
            batch.mark_seen(torch.tensor([c.tokens[-1] for c in children], device=batch.device))
        return events

    def _expand(self, request: Request, beams: list[Row], logp: torch.Tensor) -> tuple[list[Row], list[int]]:
        """The next beams of ``request`` and their parents' positions in ``beams``; no beams
        when the request is done."""
        params = request.params
        nb = params.num_beams
        V = logp.shape[1]
        scores = logp + torch.tensor([b.score for b in beams], device=logp.device)[:, None]
        values, flat = scores.view(-1).topk(min(2 * nb, scores.numel()))
        token_logps = logp.view(-1)[flat]
        tops = alternatives(logp, [params.top_logprobs] * len(beams)) if params.top_logprobs else None

        def grown(beam: Row, b: int) -> list[Alternatives]:
            return beam.top + [tops[b]] if tops is not None else beam.top

        children: list[Row] = []
        parents: list[int] = []
        for rank, (value, f, lp) in enumerate(zip(values.tolist(), flat.tolist(), token_logps.tolist(), strict=True)):
            if value == -math.inf:
                break
            b, token = divmod(f, V)
            beam = beams[b]
            if token == self.eos and params.stop_at_eos:
                if rank < nb:
                    self._add(request, beam.generated + [token], beam.logprobs + [lp], "eos", grown(beam, b))
                continue
            stream = None
            if beam.stream is not None:
                stream = beam.stream.copy()
                stream.push(token)
                if stream.stopped:
                    if rank < nb:
                        self._add(request, beam.generated + [token], beam.logprobs + [lp], "stop", grown(beam, b))
                    continue
            children.append(Row(request, len(children), beam.tokens + [token], n_ctx=beam.n_ctx,
                                logprobs=beam.logprobs + [lp], top=grown(beam, b), stream=stream, score=value))
            parents.append(b)
            if len(children) == nb:
                break
        if not children:  # nothing left to choose: the beams end as they are
            for beam in beams:
                self._add(request, beam.generated, beam.logprobs, "banned", beam.top)
            return [], []
        n_gen = len(children[0].logprobs)
        if n_gen >= params.max_new_tokens:
            for child in children:
                self._add(request, child.generated, child.logprobs, "length", child.top)
            return [], []
        if self._is_done(request, children, n_gen):
            return [], []
        return children, parents

    def _add(self, request: Request, tokens: list[int], logprobs: list[float], reason: str,
             top: list[Alternatives]) -> None:
        """Keep a finished hypothesis if it is among the ``num_beams`` best so far."""
        params = request.params
        score = rank_key(sum(logprobs), len(tokens), params.length_penalty)
        hyps = self.hypotheses[request]
        hyps.append(Hypothesis(score, tokens, logprobs, reason, top))
        hyps.sort(key=lambda h: h.score, reverse=True)
        del hyps[params.num_beams :]

    def _is_done(self, request: Request, beams: list[Row], n_gen: int) -> bool:
        params = request.params
        hyps = self.hypotheses[request]
        if len(hyps) < params.num_beams:
            return False
        if params.early_stopping:
            return True
        best_running = rank_key(max(b.score for b in beams), n_gen, params.length_penalty)
        return hyps[-1].score >= best_running

    def _finalize(self, request: Request, beams: list[Row]) -> list[FinishEvent]:
        n = request.params.num_return_sequences
        hyps = self.hypotheses.pop(request)
        if not hyps:  # cannot happen (the beams join when they stop), but never return nothing
            hyps.append(Hypothesis(math.inf, [], [], "banned"))
        best = [hyps[i % len(hyps)] for i in range(n)]
        request.open_rows = n
        return [
            FinishEvent(request.id, i, Completion(self._text(request, h), h.tokens, h.logprobs, sum(h.logprobs),
                                                  h.reason, request.prompt_tokens, h.top))
            for i, h in enumerate(best)
        ]

    def _text(self, request: Request, hyp: Hypothesis) -> str:
        """The hypothesis' text, decoded exactly as a streamed greedy/sampled row would be."""
        stream = TextStream(self.tokenizer, request.context, request.params.stop)
        tokens = hyp.tokens[:-1] if hyp.reason == "eos" else hyp.tokens
        for token in tokens:
            stream.push(token)
        stream.finish()
        return stream.text
