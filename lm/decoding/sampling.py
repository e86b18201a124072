"""Logits transforms: small pure functions ``logits [B, V] -> logits [B, V]``, and the draw.

Each request in a batch brings its own settings, so parameters are per-row tensors ``[B, 1]``
and one call transforms the whole batch. ``RowSampler`` applies them in this order (the order
of HF's logits processors):

1. constraints, which change what the model's distribution *is* for this request, so reported
   log-probabilities and beam scores include them: ``repetition_penalty``, ``logit_bias``, then
   banned tokens (``suppress_tokens`` and ``banned_ngram_tokens`` -> ``ban``);
2. shapers, which only change how a token is drawn: ``temperature``, ``top_k``, ``top_p``,
   ``min_p``. ``top_k`` and ``top_p`` work on candidates sorted once, most likely first: when
   every sampled row has a ``top_k``, only the best ``max(k)`` candidates are kept (a ``topk``
   instead of sorting the vocabulary);
3. ``draw``: inverse-CDF sampling with one uniform number per row, so each request's
   randomness comes from its own generator and does not depend on its batch-mates.

Every valid parameter keeps the numbers finite: constrained logits pass through ``sanitize``
(NaN -> -inf, +inf -> the largest float), penalties are held inside a range where dividing and
multiplying a logit cannot overflow, temperature divides logits shifted so that their maximum is
0, and the most likely token always survives top-p. A row left with only -inf (everything
banned) is the caller's to end; it is never drawn from.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lm.decoding.params import Alternatives, GenerationParams

NEG_INF = float("-inf")
PENALTY_RANGE = (1e-30, 1e30)
"""``repetition_penalty`` is applied clamped to this range: beyond it a seen token already sits
above or below every other, and a float32 logit divided or multiplied stays finite."""
MIN_TEMPERATURE = torch.finfo(torch.float32).tiny
"""A positive temperature below float32's smallest normal number acts as this one (greedy in
all but ties) instead of rounding to 0 and dividing by it."""
MAX_TEMPERATURE = 1e30
"""A larger temperature acts as this one (uniform over the candidates): in float32 it would round
to infinity, and a banned token's -inf divided by it is NaN."""


def sanitize(logits: Tensor) -> Tensor:
    """NaN becomes -inf (never chosen) and +inf the largest finite value, so ranking, softmax and
    drawing see only numbers or -inf."""
    return logits.nan_to_num(nan=NEG_INF, posinf=torch.finfo(logits.dtype).max, neginf=NEG_INF)


def repetition_penalty(logits: Tensor, seen: Tensor, penalty: Tensor) -> Tensor:
    """Make tokens already in the sequence (``seen`` ``[B, V]`` bool) less likely (CTRL,
    Keskar et al. 2019): positive logits are divided by ``penalty``, negative ones multiplied,
    so the penalty always lowers them."""
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


def banned_ngram_tokens(tokens: Sequence[int], n: int) -> list[int]:
    """Tokens that would complete an ``n``-gram already present in ``tokens``
    (``no_repeat_ngram_size``, Paulus et al. 2017)."""
    if n <= 0 or len(tokens) < n:
        return []
    if n == 1:
        return list(set(tokens))
    prefix = list(tokens[len(tokens) - n + 1 :])
    first = prefix[0]
    return [
        tokens[i + n - 1]
        for i in range(len(tokens) - n + 1)
        if tokens[i] == first and list(tokens[i : i + n - 1]) == prefix
    ]


def ban(logits: Tensor, rows: Sequence[int], tokens: Sequence[int]) -> Tensor:
    """Set ``logits[rows[j], tokens[j]]`` to -inf (a copy; the input is left alone)."""
    if not rows:
        return logits
    out = logits.clone()
    out[torch.tensor(rows, device=logits.device), torch.tensor(tokens, device=logits.device)] = NEG_INF
    return out


def temperature(logits: Tensor, t: Tensor) -> Tensor:
    """Sharpen (t < 1) or flatten (t > 1) the distribution; ``t`` ``[B, 1]`` is > 0."""
    return logits / t


def top_k(sorted_logits: Tensor, k: Tensor) -> Tensor:
    """Keep each row's ``k`` most likely tokens (``k`` ``[B, 1]``; 0 keeps all). Columns are
    sorted most likely first, so this is a mask on positions."""
    position = torch.arange(sorted_logits.shape[-1], device=sorted_logits.device)
    return sorted_logits.masked_fill((position >= k) & (k > 0), NEG_INF)


def top_p(sorted_logits: Tensor, p: Tensor) -> Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probability reaches ``p`` ``[B, 1]``; rows with p == 1 are left alone. Columns are sorted
    most likely first."""
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass of the more likely tokens
    first = torch.arange(sorted_logits.shape[-1], device=sorted_logits.device) == 0
    return sorted_logits.masked_fill((before >= p) & (p < 1) & ~first, NEG_INF)  # the best token always stays


def min_p(logits: Tensor, m: Tensor) -> Tensor:
    """Drop tokens less likely than ``m`` ``[B, 1]`` times the most likely one (Nguyen et al.
    2024); in log space, so no softmax: logit < max + log(m). m == 0 keeps all."""
    floor = logits.max(dim=-1, keepdim=True).values + m.log()
    return logits.masked_fill(logits < floor, NEG_INF)


def draw(logits: Tensor, uniforms: Tensor) -> Tensor:
    """One token per row by inverse CDF: the first token whose cumulative probability exceeds
    ``u * total`` for ``uniforms`` ``[B]`` in [0, 1). Tokens of probability 0 are never drawn."""
    cdf = logits.float().softmax(-1).cumsum(-1)  # [B, V]
    total = cdf[:, -1:]
    # Keep the target strictly below the total, so some token's cdf exceeds it whatever the rounding.
    target = torch.minimum(uniforms[:, None].to(cdf.dtype) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1)


class RowSampler:
    """The transforms for one batch composition: per-row parameter tensors built once when
    rows join or leave, not per step, and flags that skip transforms no row uses."""

    def __init__(self, params: Sequence[GenerationParams], device: torch.device) -> None:
        def col(values: list[float]) -> Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)[:, None]

        self.top_logprobs = [p.top_logprobs for p in params]
        self.max_top_logprobs = max(self.top_logprobs, default=0)
        self.sampled = [p.samples for p in params]
        self.any_sampled = any(self.sampled)
        self.penalty = col([min(max(p.repetition_penalty, PENALTY_RANGE[0]), PENALTY_RANGE[1]) for p in params])
        self.any_penalty = any(p.repetition_penalty != 1.0 for p in params)
        self.ngram = [p.no_repeat_ngram_size for p in params]
        self.any_ngram = any(self.ngram)
        # logit_bias and suppress_tokens are one constraint: a per-row addition to chosen logits
        # (-inf for a suppressed token), built once per batch composition, not per step.
        bias = [(i, t, b) for i, p in enumerate(params) for t, b in p.logit_bias]
        bias += [(i, t, NEG_INF) for i, p in enumerate(params) for t in p.suppress_tokens]
        self.bias = None
        if bias:
            rows, tokens, values = zip(*bias, strict=True)
            self.bias = (torch.tensor(rows, device=device), torch.tensor(tokens, device=device),
                         torch.tensor(values, dtype=torch.float32, device=device))
        if self.any_sampled:
            # Greedy rows in a mixed batch get neutral settings; their draw is replaced by argmax.
            sampled = [p for p, s in zip(params, self.sampled, strict=True) if s]
            self.is_sampled = torch.tensor(self.sampled, device=device)
            self.temperature = col([min(max(p.temperature, MIN_TEMPERATURE), MAX_TEMPERATURE) if s else 1.0
                                    for p, s in zip(params, self.sampled, strict=True)])
            self.any_temperature = any(p.temperature != 1.0 for p in sampled)
            self.top_k = col([p.top_k if s else 0 for p, s in zip(params, self.sampled, strict=True)])
            self.any_top_k = any(p.top_k for p in sampled)
            # With a top_k on every sampled row, the candidates are the best max_top_k tokens.
            self.max_top_k = max(p.top_k for p in sampled) if all(p.top_k for p in sampled) else 0
            self.top_p = col([p.top_p if s else 1.0 for p, s in zip(params, self.sampled, strict=True)])
            self.any_top_p = any(p.top_p < 1.0 for p in sampled)
            self.min_p = col([p.min_p if s else 0.0 for p, s in zip(params, self.sampled, strict=True)])
            self.any_min_p = any(p.min_p > 0.0 for p in sampled)

    def constrain(self, logits: Tensor, seen: Tensor | None, histories: Sequence[Sequence[int]]) -> Tensor:
        """Apply the constraints (repetition penalty, logit bias, suppressed tokens, no-repeat
        n-grams) to float logits."""
        if self.any_penalty and seen is not None:
            logits = repetition_penalty(logits, seen, self.penalty)
        if self.bias is not None:
            rows_t, tokens_t, values = self.bias
            logits = logits.index_put((rows_t, tokens_t), values.to(logits.dtype), accumulate=True)  # sanitize: NaN
        if self.any_ngram:
            rows: list[int] = []
            tokens: list[int] = []
            for i, (n, history) in enumerate(zip(self.ngram, histories, strict=True)):
                banned = banned_ngram_tokens(history, n)
                rows += [i] * len(banned)
                tokens += banned
            logits = ban(logits, rows, tokens)
        return logits

    def choose(self, logits: Tensor, uniforms: Tensor | None, *, best: Tensor | None = None,
               top: Tensor | None = None, alive: Tensor | None = None) -> Tensor:
        """Next token per row from constrained, sanitized logits: argmax for greedy rows, a draw
        for sampled rows (``uniforms`` ``[B]``, one per row, needed when any row samples).
        ``best``/``top`` are the rows' argmax and max if the caller has them; ``alive`` marks
        rows with a finite logit -- the others get the argmax (an id in range), never a draw."""
        if best is None or top is None:
            top, best = logits.max(-1)
        if not self.any_sampled:
            return best
        if alive is None:
            alive = top > NEG_INF
        # Shift so the best logit is 0: dividing by a tiny temperature then cannot overflow.
        shaped = logits - torch.where(alive, top, 0.0)[:, None]
        shaped = temperature(shaped, self.temperature) if self.any_temperature else shaped
        V = shaped.shape[-1]
        ids = None  # candidate column -> token id, once candidates are sorted
        if 0 < self.max_top_k < V:
            shaped, ids = shaped.topk(self.max_top_k, dim=-1)  # [B, k], most likely first
        elif self.any_top_k or self.any_top_p:
            shaped, ids = shaped.sort(dim=-1, descending=True)
        if self.any_top_k:
            shaped = top_k(shaped, self.top_k)
        if self.any_top_p:
            shaped = top_p(shaped, self.top_p)
        if self.any_min_p:
            shaped = min_p(shaped, self.min_p)
        if uniforms is None:
            raise ValueError("sampled rows need one uniform number per row")
        if ids is not None:
            # Draw in vocabulary order whatever the candidates were, so a row's token does not
            # depend on what its batch-mates asked for.
            shaped = torch.full_like(logits, NEG_INF).scatter_(1, ids, shaped)
        return torch.where(self.is_sampled & alive, draw(shaped, uniforms), best)


def alternatives(logp: Tensor, counts: Sequence[int]) -> list[Alternatives]:
    """Row ``i``'s ``counts[i]`` most likely ``(token id, log-probability)`` under ``logp``
    ``[B, V]`` (log-probabilities), most likely first: one ``topk`` for the whole batch, at the
    largest count, cut per row. Tokens at ``-inf`` (banned) are left out."""
    k = min(max(counts, default=0), logp.shape[-1])
    if k == 0:
        return [() for _ in counts]
    values, ids = logp.topk(k, dim=-1)
    return [tuple((t, v) for t, v in zip(row_ids[:n], row_values[:n], strict=True) if v > NEG_INF)
            for row_ids, row_values, n in zip(ids.tolist(), values.tolist(), counts, strict=True)]
