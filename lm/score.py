"""Perplexity scoring: per-token negative log-likelihood of texts under a model.

Conventions (the ones ``lmforge score`` prints and the server returns):

- A text is ``tokenizer.encode(text)``, and every one of its N tokens is scored, so ``tokens ==
  len(encode(text))``. The first token's left context is ``<eos>``: the training stream is a
  sequence of ``<eos>``-terminated lines (the Penn Treebank convention, where perplexity covers
  every word and every ``<eos>``), so ``<eos>`` is what precedes the start of a text. (A
  tokenizer without ``<eos>`` falls back to ``<bos>``; with neither, the first token is not
  scored and ``tokens == N - 1``.)
- ``nll`` is the total in nats; ``perplexity = exp(nll / tokens)``; ``bits_per_char = nll /
  ln 2 / characters`` with ``characters = len(text)`` (code points), comparable across
  tokenizers.
- A Transformer sees at most ``max_context`` tokens. Longer texts are scored in windows of
  ``max_context`` tokens that advance by ``stride`` (default ``max_context``: disjoint
  windows); each token is scored exactly once, in the first window that contains it after the
  previous window's end, so it has at least ``max_context - stride`` tokens of left context.
  Recurrent models have no limit: texts run in chunks that carry the hidden state, which is
  exact, and ``stride`` does not apply.
- The loss is ``lm.losses.token_nll``'s, the one training and evaluation use, computed by
  ``hidden_token_nll`` over slices of positions so the logits of a whole batch never sit in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lm.engine import model_device
from lm.losses import hidden_token_nll, perplexity, token_nll
from lm.params import ParamError

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


def score_texts(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    *,
    stride: int | None = None,
    token_logprobs: bool = False,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> list[ScoreResult]:
    """Score each text (see the module docstring for the conventions)."""
    start = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.bos_id
    nlls = score_ids(model, [tokenizer.encode(t) for t in texts], context_id=start, stride=stride,
                     batch_size=batch_size, device=device)
    results = []
    for text, nll in zip(texts, nlls, strict=True):
        total = float(nll.sum())
        results.append(ScoreResult(
            tokens=len(nll),
            nll=total,
            perplexity=perplexity(total, len(nll)),
            bits_per_char=total / math.log(2) / len(text) if text else 0.0,
            characters=len(text),
            token_logprobs=(-nll).tolist() if token_logprobs else None,
        ))
    return results


def score_ids(
    model: nn.Module,
    sequences: list[list[int]],
    *,
    context_id: int | None,
    stride: int | None = None,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> list[Tensor]:
    """Per-token NLL (nats, float64 on the CPU) of each token sequence; the first token is
    conditioned on ``context_id`` (or, if None, not scored)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ParamError("batch_size", f"batch_size must be an integer >= 1, got {batch_size!r}")
    max_context = getattr(model, "max_context", None)
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1
                               or (max_context is not None and stride > max_context)):
        raise ParamError("stride", f"stride must be an integer in [1, {max_context or 'inf'}], got {stride!r}")
    device = torch.device(device) if device is not None else model_device(model)
    pairs = []  # (inputs, targets): inputs[i] predicts targets[i]
    for seq in sequences:
        head = [context_id] if context_id is not None else []
        full = head + list(seq)
        pairs.append((full[:-1], full[1:]))
    out = [torch.zeros(len(t), dtype=torch.float64) for _, t in pairs]
    with torch.inference_mode():
        if max_context is None:
            _score_recurrent(model, pairs, out, batch_size, device)
        else:
            _score_windows(model, pairs, out, max_context, stride or max_context, batch_size, device)
    return out


def _nll(model: nn.Module, inputs: Tensor, targets: Tensor, state, **kw):  # noqa: ANN001, ANN202
    """Per-token NLL ``[B, T]`` and the new state; through ``hidden_token_nll`` when the model
    exposes its ``output_layer`` (the lmforge families), else from its logits."""
    layer = getattr(model, "output_layer", None)
    if layer is None:
        logits, state = model(inputs, state, **kw)
        return token_nll(logits, targets), state
    hidden, state = model(inputs, state, return_hidden=True, **kw)
    return hidden_token_nll(hidden, layer, targets), state


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


def _score_windows(model: nn.Module, pairs, out: list[Tensor], size: int, stride: int, batch_size: int,
                   device: torch.device) -> None:
    """Independent windows of at most ``size`` tokens, longest first in right-padded batches
    (right padding never changes a causal model's earlier positions)."""
    jobs = [(i, *w) for i, (x, _) in enumerate(pairs) for w in windows(len(x), size, stride)]
    jobs.sort(key=lambda j: j[2] - j[1], reverse=True)
    for b in range(0, len(jobs), batch_size):
        batch = jobs[b : b + batch_size]
        width = batch[0][2] - batch[0][1]
        inputs = torch.zeros(len(batch), width, dtype=torch.long)
        targets = torch.full((len(batch), width), -100, dtype=torch.long)
        for r, (i, begin, end, first) in enumerate(batch):
            x, y = pairs[i]
            inputs[r, : end - begin] = torch.tensor(x[begin:end])
            targets[r, first - begin : end - begin] = torch.tensor(y[first:end])
        nll = _nll(model, inputs.to(device), targets.to(device), None, use_cache=False)[0].double().cpu()
        for r, (i, begin, end, first) in enumerate(batch):
            out[i][first:end] = nll[r, first - begin : end - begin]


def _score_recurrent(model: nn.Module, pairs, out: list[Tensor], batch_size: int, device: torch.device) -> None:
    """Whole texts, batched by similar length, in chunks that carry the recurrent state."""
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
        inputs, targets = inputs.to(device), targets.to(device)
        state = None
        nll = torch.empty(len(batch), width, dtype=torch.float64)
        for start in range(0, width, RNN_CHUNK):
            chunk, state = _nll(model, inputs[:, start : start + RNN_CHUNK], targets[:, start : start + RNN_CHUNK], state)
            nll[:, start : start + RNN_CHUNK] = chunk.double().cpu()
        for r, i in enumerate(batch):
            out[i][:] = nll[r, : len(pairs[i][1])]
