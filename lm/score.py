"""Perplexity scoring: per-token negative log-likelihood of texts under a model.

Conventions (the ones ``lmforge score`` prints and the server returns):

- A text is ``tokenizer.encode(text)``, and every one of its N tokens is scored, so ``tokens ==
  len(encode(text))``. The first token's left context is the checkpoint's text start
  (``lm.context``): the line break the model was trained to begin texts after -- ``"\n"``
  for char and sentencepiece models, ``<eos>`` for a Penn-Treebank-style word model, where
  perplexity then covers every word and every ``<eos>``. Generation frames a prompt the same
  way: a text that already begins with the line break has it as its context (that token is not
  scored: ``tokens == N - 1``), and a model with no text start leaves the first token unscored.
- ``nll`` is the total in nats; ``perplexity = exp(nll / tokens)``; ``bits_per_char = nll /
  ln 2 / characters`` with ``characters = len(text)`` (code points), comparable across
  tokenizers.
- A Transformer sees at most ``max_context`` tokens -- the context length it was trained on
  (``TextContext.max_length``). Longer texts are scored in windows of ``max_context`` tokens
  that advance by ``stride`` (default ``max_context``: disjoint
  windows); each token is scored exactly once, in the first window that contains it after the
  previous window's end, so it has at least ``max_context - stride`` tokens of left context.
  Recurrent models have no limit: texts run in chunks that carry the hidden state, which is
  exact, and ``stride`` does not apply.
- The loss is ``lm.losses.token_nll``'s, the one training and evaluation use, computed by
  ``hidden_token_nll`` over slices of positions so the logits of a whole batch never sit in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lm.context import TextContext
from lm.decoding.params import Alternatives, ParamError
from lm.losses import hidden_token_scores, perplexity, token_nll
from lm.models import model_device

RNN_CHUNK = 512
"""Tokens per forward for recurrent models (the state carries across chunks, so it is exact)."""


@dataclass
class ScoreResult:
    tokens: int
    nll: float
    perplexity: float
    bits_per_char: float
    characters: int
    token_logprobs: list[float] | None
    top_logprobs: list[Alternatives] | None = None
    """With ``ScoreJob(top=k)``: each scored position's ``k`` most likely tokens."""


def score_texts(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    *,
    context: TextContext | None = None,
    stride: int | None = None,
    token_logprobs: bool = False,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> list[ScoreResult]:
    """Score each text (see the module docstring for the conventions). ``context`` is the
    checkpoint's (``lm.checkpoint.read_context``); by default the trainer's rule is applied to
    ``tokenizer`` and the model's whole context."""
    context = context or TextContext.derive(tokenizer, getattr(model, "max_context", None))
    nlls = score_ids(model, [tokenizer.encode(t) for t in texts], context=context, stride=stride,
                     batch_size=batch_size, device=device)
    return score_results(texts, nlls, token_logprobs=token_logprobs)


def score_results(texts: list[str], nlls: list[Tensor], *, token_logprobs: bool = False,
                  tops: list[list[Alternatives]] | None = None) -> list[ScoreResult]:
    """Each text's figures from its per-token NLL (``ScoreJob.result()``), with the
    alternatives ``tops`` (``ScoreJob.top_result()``) when given."""
    results = []
    for i, (text, nll) in enumerate(zip(texts, nlls, strict=True)):
        total = float(nll.sum())
        results.append(ScoreResult(
            tokens=len(nll),
            nll=total,
            perplexity=perplexity(total, len(nll)),
            bits_per_char=total / math.log(2) / len(text) if text else 0.0,
            characters=len(text),
            token_logprobs=(-nll).tolist() if token_logprobs else None,
            top_logprobs=tops[i] if tops is not None else None,
        ))
    return results


def score_ids(
    model: nn.Module,
    sequences: list[list[int]],
    *,
    context: TextContext,
    stride: int | None = None,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> list[Tensor]:
    """Per-token NLL (nats, float64 on the CPU) of each token sequence after ``context.start``
    (framed as ``TextContext.frame`` frames a prompt; with no start, the first token is context
    and not scored)."""
    job = ScoreJob(model, sequences, context=context, stride=stride, batch_size=batch_size, device=device)
    while not job.step():
        pass
    return job.result()


class ScoreJob:
    """The scoring of some sequences, cut into bounded forwards.

    ``step()`` runs one forward (a batch of windows, or one chunk of a batch of recurrent
    texts) and says whether the job is done, so a server can interleave scoring with decoding
    and stop it between any two forwards (a timeout, a client that left). ``cost`` -- the token
    positions the job will run through the model, every window counted -- is known before any
    work, so a server can refuse a request that would cost too much (``stride: 1`` multiplies
    the work by the window length). With ``top``, each scored position's ``top`` most likely
    tokens are kept too (``top_result()``): the prompt's alternatives that OpenAI's ``echo``
    with ``logprobs`` returns.
    """

    def __init__(self, model: nn.Module, sequences: list[list[int]], *, context: TextContext,
                 stride: int | None = None, batch_size: int = 16, device: torch.device | str | None = None,
                 top: int = 0) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ParamError("batch_size", f"batch_size must be an integer >= 1, got {batch_size!r}")
        size = context.max_length
        if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1
                                   or (size is not None and stride > size)):
            raise ParamError("stride", f"stride must be an integer in [1, {size or 'inf'}], got {stride!r}")
        self.model = model
        self.device = torch.device(device) if device is not None else model_device(model)
        self.pairs: list[tuple[list[int], list[int]]] = []  # (inputs, targets): inputs[i] predicts targets[i]
        self._firsts = []  # the first scored target: the ones before it predict the rest of the start
        for seq in sequences:
            full, n = context.frame(seq)
            self.pairs.append((full[:-1], full[1:]))
            self._firsts.append(max(n, 1) - 1)
        self._out = [torch.zeros(len(t), dtype=torch.float64) for _, t in self.pairs]
        self.top = top
        self._top = [(torch.zeros(len(t), top), torch.zeros(len(t), top, dtype=torch.long)) for _, t in self.pairs
                     ] if top else []  # each sequence's (log-probabilities, ids), only when asked for
        if size is None:
            self.cost = sum(len(x) for x, _ in self.pairs)
            self._work = self._recurrent(batch_size)
        else:
            jobs = [(i, *w) for i, (x, _) in enumerate(self.pairs) for w in windows(len(x), size, stride or size)]
            self.cost = sum(end - begin for _, begin, end, _ in jobs)
            self._work = self._windows(jobs, batch_size)
        self.done = False

    def step(self) -> bool:
        """Run the next forward; True once every token is scored."""
        if not self.done:
            with torch.inference_mode():
                self.done = next(self._work, True) is True
        return self.done

    def result(self) -> list[Tensor]:
        """Each sequence's per-token NLL (after ``step()`` returned True)."""
        if not self.done:
            raise RuntimeError("the score job has not finished")
        return [nll[first:] for nll, first in zip(self._out, self._firsts, strict=True)]

    def top_result(self) -> list[list[Alternatives]]:
        """Each sequence's alternatives per scored token (aligned with ``result()``)."""
        self.result()
        if not self.top:
            return [[] for _ in self._firsts]
        return [[tuple(zip(i, v, strict=True)) for i, v in zip(ids[first:].tolist(), values[first:].tolist(), strict=True)]
                for (values, ids), first in zip(self._top, self._firsts, strict=True)]

    def _windows(self, jobs: list[tuple[int, int, int, int]], batch_size: int) -> Iterator[None]:
        """Independent windows, longest first in right-padded batches (right padding never
        changes a causal model's earlier positions)."""
        jobs.sort(key=lambda j: j[2] - j[1], reverse=True)
        for b in range(0, len(jobs), batch_size):
            batch = jobs[b : b + batch_size]
            width = batch[0][2] - batch[0][1]
            inputs = torch.zeros(len(batch), width, dtype=torch.long)
            targets = torch.full((len(batch), width), -100, dtype=torch.long)
            for r, (i, begin, end, first) in enumerate(batch):
                x, y = self.pairs[i]
                inputs[r, : end - begin] = torch.tensor(x[begin:end])
                targets[r, first - begin : end - begin] = torch.tensor(y[first:end])
            nll, _, top = _nll(self.model, inputs.to(self.device), targets.to(self.device), None, self.top,
                               use_cache=False)
            nll = nll.double().cpu()
            top = None if top is None else tuple(t.cpu() for t in top)
            for r, (i, begin, end, first) in enumerate(batch):
                self._out[i][first:end] = nll[r, first - begin : end - begin]
                if top is not None:
                    for mine, theirs in zip(self._top[i], top, strict=True):
                        mine[first:end] = theirs[r, first - begin : end - begin]
            yield

    def _recurrent(self, batch_size: int) -> Iterator[None]:
        """Whole texts, batched by similar length, in chunks that carry the recurrent state."""
        pairs = self.pairs
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]), reverse=True)
        for b in range(0, len(order), batch_size):
            batch = [i for i in order[b : b + batch_size] if pairs[i][0]]
            if not batch:
                continue
            width = len(pairs[batch[0]][0])
            inputs = torch.zeros(len(batch), width, dtype=torch.long)
            targets = torch.full((len(batch), width), -100, dtype=torch.long)
            for r, i in enumerate(batch):
                x, y = pairs[i]
                inputs[r, : len(x)] = torch.tensor(x)
                targets[r, : len(y)] = torch.tensor(y)
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            state = None
            nll = torch.empty(len(batch), width, dtype=torch.float64)
            tops = (torch.empty(len(batch), width, self.top),
                    torch.empty(len(batch), width, self.top, dtype=torch.long)) if self.top else None
            for start in range(0, width, RNN_CHUNK):
                cut = slice(start, start + RNN_CHUNK)
                chunk, state, top = _nll(self.model, inputs[:, cut], targets[:, cut], state, self.top)
                nll[:, cut] = chunk.double().cpu()
                if top is not None and tops is not None:
                    for mine, theirs in zip(tops, top, strict=True):
                        mine[:, cut] = theirs.cpu()
                yield
            for r, i in enumerate(batch):
                n = len(pairs[i][1])
                self._out[i][:] = nll[r, :n]
                if tops is not None:
                    for mine, theirs in zip(self._top[i], tops, strict=True):
                        mine[:] = theirs[r, :n]


def _nll(model: nn.Module, inputs: Tensor, targets: Tensor, state, top: int = 0, **kw):  # noqa: ANN001, ANN202
    """Per-token NLL ``[B, T]``, the new state, and with ``top`` the (log-probabilities, ids)
    of each position's most likely tokens (else None); through ``hidden_token_scores`` when the
    model exposes its ``output_layer`` (the lmforge families), else from its logits."""
    layer = getattr(model, "output_layer", None)
    if layer is None:
        logits, state = model(inputs, state, **kw)
        best = logits.float().log_softmax(-1).topk(min(top, logits.shape[-1]), dim=-1) if top else None
        return token_nll(logits, targets), state, (tuple(best) if best is not None else None)
    hidden, state = model(inputs, state, return_hidden=True, **kw)
    nll, values, ids = hidden_token_scores(hidden, layer, targets, top=top)
    return nll, state, ((values, ids) if values is not None and ids is not None else None)


def windows(n: int, size: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first_scored)`` windows over ``n`` positions: ``[begin, end)`` runs, and
    ``[first_scored, end)`` is scored; every position is scored exactly once."""
    if n == 0:
        return []
    end = min(size, n)
    out = [(0, end, 0)]
    while end < n:
        new_end = min(end + stride, n)
        out.append((max(0, new_end - size), new_end, end))
        end = new_end
    return out
