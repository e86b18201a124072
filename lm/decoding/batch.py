"""Rows that decode together: their shared decode state and one model forward per step.

A ``RowBatch`` knows nothing of strategies. Each step every row either *decodes* (feeds its
last token to the cached state) or is *(re)filled*: a row that just joined runs its context as
a prefill, and a Transformer row whose window is full re-runs its last ``max_context // 2``
tokens into a fresh state (the oldest tokens slide out; exact with respect to recomputing that
window). Refilled states are joined to the decoding ones with ``concat`` (left padding), rows
leave with ``select``, and ``compact`` drops slots no row uses any more, so rows can join and
leave between any two steps (continuous batching) without the state growing.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lm.models import concat_states

if TYPE_CHECKING:
    from lm.decoding.params import Alternatives, GenerationParams
    from lm.decoding.streaming import TextStream

PREFILL_TOKENS = 2048
"""Most tokens (rows x length) in one prefill forward: bounds the [rows, T, V] logits it makes."""


@dataclass(eq=False)
class Request:
    """A request being decoded: its parameters, conditioning context and open rows. Compared
    by identity, so strategies can key their own per-request state by it."""

    id: Hashable
    params: GenerationParams
    prompt_tokens: int
    context: list[int]
    """What the model reads before generating: the text start, then the prompt."""
    start: int = 0
    """How many leading ``context`` ids are the text start: never penalised, banned or decoded."""
    open_rows: int = 0


@dataclass(eq=False)
class Row:
    """One sequence being decoded: a sample of a request, or one of its beams."""

    request: Request
    index: int
    tokens: list[int]
    """Everything the model has seen or will see next: context (text start + prompt) + generated."""
    n_ctx: int = 0
    """How many of the last ``tokens`` the decode state holds (0: not prefilled yet). The last
    token is always pending: chosen, but fed at the next step."""
    logprobs: list[float] = field(default_factory=list)
    top: list[Alternatives] = field(default_factory=list)
    """With ``top_logprobs``: each generated position's most likely tokens."""
    stream: TextStream | None = None
    rng: random.Random | None = None
    score: float = 0.0
    """Beam search: sum of the log-probabilities of the generated tokens."""

    @property
    def generated(self) -> list[int]:
        return self.tokens[len(self.request.context) :]


class RowBatch:
    """The rows of one group, aligned with ``state`` (row ``i`` is batch row ``i``)."""

    def __init__(self, model: nn.Module, device: torch.device, max_context: int | None = None) -> None:
        self.model = model
        self.device = device
        self.max_context = max_context
        """The longest window a row decodes in (the context length the model was trained on;
        None: unbounded, for recurrent models)."""
        self.rows: list[Row] = []
        self.joining: list[Row] = []
        self.state: Any = None
        self.seen: Tensor | None = None
        """``[rows, V]`` bool, the tokens each row has seen; kept only once a row needs it."""
        self.version = 0
        """Bumped whenever the rows change, so per-composition tensors know to rebuild."""
        self.pending: Tensor | None = None
        """``[rows]`` each row's last token as a tensor, if the caller has it (saves building
        the next input from Python lists)."""

    def __len__(self) -> int:
        return len(self.rows) + len(self.joining)

    def join(self, rows: list[Row]) -> None:
        """Queue rows to be prefilled at the next ``forward``."""
        self.joining += rows

    def forward(self) -> Tensor:
        """One forward for every row; returns next-token logits ``[rows, V]`` in the order of
        ``self.rows`` after this call (decoding rows first, then refilled ones)."""
        rows, mc = self.rows, self.max_context
        decode = [i for i, r in enumerate(rows) if mc is None or r.n_ctx < mc]
        slide = [i for i, r in enumerate(rows) if mc is not None and r.n_ctx >= mc]
        refill = [rows[i] for i in slide] + self.joining
        keep = max(1, mc // 2) if mc else 0
        windows = [r.tokens[-keep:] for r in refill[: len(slide)]]
        windows += [r.tokens[-mc:] if mc else r.tokens for r in self.joining]

        logits, states = [], []
        if decode:
            if len(decode) == len(rows):
                state = self.state
                last = self.pending[:, None] if self.pending is not None else None
            else:
                state, last = self.state.select(self._index(decode)), None
            if last is None:
                last = torch.tensor([[rows[i].tokens[-1]] for i in decode], device=self.device)  # [B, 1]
            out, state = self.model(last, state)
            logits.append(out[:, -1])
            states.append(state)
            for i in decode:
                rows[i].n_ctx += 1
        if refill:
            out, state = self._prefill(windows)
            logits.append(out)
            states.append(state)
            for row, window in zip(refill, windows, strict=True):
                row.n_ctx = len(window)
            if self.seen is not None:
                parts = [self.seen[decode + slide]] if decode or slide else []
                self.seen = torch.cat(parts + [self._seen_for(self.joining, self.seen.shape[1])])
            self.rows = [rows[i] for i in decode] + refill
            self.joining = []
            self.state = (states[0] if len(states) == 1 else concat_states(states)).compact()
            self.version += 1
        else:
            self.state = states[0]
        self.pending = None
        return logits[0] if len(logits) == 1 else torch.cat(logits)

    def keep(self, index: list[int], rows: list[Row] | None = None) -> None:
        """Keep, reorder or duplicate rows: the new row ``j`` continues old row ``index[j]``
        (``rows`` gives the new Row objects, e.g. beams forked from their parents)."""
        before = len(self.rows)
        same_rows = rows is None
        self.rows = rows if rows is not None else [self.rows[i] for i in index]
        self.version += 1
        if not index:
            self.state, self.seen, self.pending = None, None, None
            return
        if index == list(range(before)):
            if not same_rows:
                self.pending = None
            return
        idx = self._index(index)
        self.state = self.state.select(idx)
        if len(index) < before:  # rows left: maybe slots nobody uses any more
            self.state = self.state.compact()
        if self.seen is not None:
            self.seen = self.seen.index_select(0, idx)
        self.pending = self.pending.index_select(0, idx) if same_rows and self.pending is not None else None

    def drop(self, request: Request) -> None:
        """Remove every row of ``request`` (a cancelled request)."""
        self.joining = [r for r in self.joining if r.request is not request]
        keep = [i for i, r in enumerate(self.rows) if r.request is not request]
        if len(keep) < len(self.rows):
            self.keep(keep)

    def seen_mask(self, vocab_size: int) -> Tensor:
        """The ``[rows, V]`` seen-token mask, built on first use and maintained from then on."""
        if self.seen is None:
            self.seen = self._seen_for(self.rows, vocab_size)
        return self.seen

    def mark_seen(self, tokens: Tensor) -> None:
        """Record each row's newly chosen token (``tokens`` ``[rows]``) in the seen mask."""
        if self.seen is not None:
            self.seen[torch.arange(len(tokens), device=self.device), tokens] = True

    def _seen_for(self, rows: list[Row], vocab_size: int) -> Tensor:
        seen = torch.zeros(len(rows), vocab_size, dtype=torch.bool, device=self.device)
        # The text start is context the model is given, not text the request wrote: never seen.
        row_idx = [i for i, r in enumerate(rows) for _ in r.tokens[r.request.start :]]
        tok_idx = [t for r in rows for t in r.tokens[r.request.start :]]
        if tok_idx:
            seen[torch.tensor(row_idx, device=self.device), torch.tensor(tok_idx, device=self.device)] = True
        return seen

    def _index(self, index: list[int]) -> Tensor:
        return torch.tensor(index, dtype=torch.long, device=self.device)

    def _prefill(self, windows: list[list[int]]) -> tuple[Tensor, Any]:
        """Run each window from an empty state; returns last-position logits ``[n, V]`` and the
        states, in the order of ``windows``. Identical windows (the samples of one request) run
        once; the rest run in left-padded batches of similar length."""
        unique: dict[tuple[int, ...], int] = {}
        which = [unique.setdefault(tuple(w), len(unique)) for w in windows]
        contexts = list(unique)
        order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
        groups: list[list[int]] = []
        for i in order:
            if groups and (len(groups[-1]) + 1) * len(contexts[i]) <= PREFILL_TOKENS:
                groups[-1].append(i)
            else:
                groups.append([i])
        logits, states = [], []
        for group in groups:
            out, state = self._run([contexts[i] for i in group])
            logits.append(out)
            states.append(state)
        position = {c: p for p, c in enumerate(i for g in groups for i in g)}
        index = [position[w] for w in which]
        out = logits[0] if len(logits) == 1 else torch.cat(logits)
        state = states[0] if len(states) == 1 else concat_states(states)
        if index != list(range(len(contexts))):
            idx = self._index(index)
            out, state = out.index_select(0, idx), state.select(idx)
        return out, state

    def _run(self, contexts: list[tuple[int, ...]]) -> tuple[Tensor, Any]:
        """Prefill left-padded ``contexts``, in chunks of ``PREFILL_TOKENS`` for one long one."""
        width = max(len(c) for c in contexts)
        tokens = torch.zeros(len(contexts), width, dtype=torch.long)
        mask = torch.zeros(len(contexts), width, dtype=torch.bool)
        for i, c in enumerate(contexts):
            tokens[i, width - len(c) :] = torch.tensor(c, dtype=torch.long)
            mask[i, width - len(c) :] = True
        tokens = tokens.to(self.device)
        pad_mask = None if bool(mask.all()) else mask.to(self.device)
        state = None
        for start in range(0, width, PREFILL_TOKENS):  # one chunk unless a single long context
            chunk = tokens[:, start : start + PREFILL_TOKENS]
            out, state = self.model(chunk, state, pad_mask=pad_mask)
        return out[:, -1], state
