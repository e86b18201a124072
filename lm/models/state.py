"""Decoding state shared by both model families.

Every model returns ``(logits, state)``. The decoding engine only ever calls ``select`` (keep,
reorder or duplicate batch rows: beam search, finished rows), ``concat`` (join the states of
separately-prefilled prompts: batching) and ``compact`` (drop slots no row uses any more), so it
never asks which architecture it drives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RNNState:
    """Recurrent hidden state: ``h`` (and ``c`` for LSTMs), each ``[n_layer, B, n_hidden]``."""

    h: Tensor
    c: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.h.shape[1]

    def select(self, index: Tensor) -> RNNState:
        return RNNState(
            self.h.index_select(1, index),
            None if self.c is None else self.c.index_select(1, index),
        )

    def detach(self) -> RNNState:
        """Cut the graph (truncated backpropagation through time)."""
        return RNNState(self.h.detach(), None if self.c is None else self.c.detach())

    @staticmethod
    def concat(states: list[RNNState]) -> RNNState:
        return RNNState(
            torch.cat([s.h for s in states], dim=1),
            None if states[0].c is None else torch.cat([s.c for s in states], dim=1),  # type: ignore[misc]
        )

    def compact(self) -> RNNState:
        """Nothing to drop: a recurrent state has no per-position slots."""
        return self

    def as_tuple(self) -> Tensor | tuple[Tensor, Tensor]:
        return self.h if self.c is None else (self.h, self.c)


class KVCache:
    """Key/value cache for a Transformer, preallocated and grown in chunks.

    All rows share slot indices (slot ``t`` of every row was written in the same forward), so a
    batch of prompts of different lengths is left-padded: ``valid`` marks which slots hold real
    tokens and ``next_pos`` is each row's next position (its count of real tokens).

    Shapes: ``k``, ``v``: ``[n_layer, B, n_kv_head, capacity, head_dim]``; ``valid``: ``[B, capacity]``.
    """

    GROW = 64

    def __init__(self, k: Tensor, v: Tensor, valid: Tensor, next_pos: Tensor, length: int) -> None:
        self.k, self.v, self.valid, self.next_pos, self.length = k, v, valid, next_pos, length
        self.padded = bool((~valid[:, :length]).any())

    @classmethod
    def empty(cls, n_layer: int, batch: int, n_kv_head: int, head_dim: int, capacity: int,
              device: torch.device, dtype: torch.dtype) -> KVCache:
        shape = (n_layer, batch, n_kv_head, capacity, head_dim)
        return cls(
            torch.empty(shape, device=device, dtype=dtype),
            torch.empty(shape, device=device, dtype=dtype),
            torch.zeros(batch, capacity, dtype=torch.bool, device=device),
            torch.zeros(batch, dtype=torch.long, device=device),
            0,
        )

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def reserve(self, extra: int) -> None:
        """Make room for ``extra`` more slots (grows by whole chunks to amortise copies)."""
        need = self.length + extra
        if need <= self.capacity:
            return
        new_cap = max(need, self.capacity + self.GROW)
        pad = new_cap - self.capacity
        shape = list(self.k.shape)
        shape[3] = pad
        self.k = torch.cat([self.k, self.k.new_empty(shape)], dim=3)
        self.v = torch.cat([self.v, self.v.new_empty(shape)], dim=3)
        self.valid = torch.cat([self.valid, self.valid.new_zeros(self.batch_size, pad)], dim=1)

    def select(self, index: Tensor) -> KVCache:
        return KVCache(
            self.k.index_select(1, index),
            self.v.index_select(1, index),
            self.valid.index_select(0, index),
            self.next_pos.index_select(0, index),
            self.length,
        )

    def compact(self) -> KVCache:
        """Drop the leading slots no row uses (left by rows that finished, or by padding rows
        that joined a longer batch), so attention spans only live slots.

        A view, not a copy: the next ``reserve`` or ``select`` copies only what is kept. Without
        this a batch that rows keep joining and leaving would grow its slot count forever.
        """
        used = self.valid[:, : self.length].any(0)
        first = int(used.long().argmax()) if bool(used.any()) else self.length
        if first == 0:
            return self
        return KVCache(self.k[:, :, :, first:], self.v[:, :, :, first:], self.valid[:, first:],
                       self.next_pos, self.length - first)

    @staticmethod
    def concat(caches: list[KVCache]) -> KVCache:
        """Join caches of different lengths along the batch, right-aligned (left padding)."""
        length = max(c.length for c in caches)
        ks, vs, valids = [], [], []
        for c in caches:
            shift = length - c.length
            k, v, valid = c.k[:, :, :, : c.length], c.v[:, :, :, : c.length], c.valid[:, : c.length]
            if shift:
                k = torch.cat([k.new_zeros(*k.shape[:3], shift, k.shape[4]), k], dim=3)
                v = torch.cat([v.new_zeros(*v.shape[:3], shift, v.shape[4]), v], dim=3)
                valid = torch.cat([valid.new_zeros(valid.shape[0], shift), valid], dim=1)
            ks.append(k)
            vs.append(v)
            valids.append(valid)
        return KVCache(
            torch.cat(ks, dim=1),
            torch.cat(vs, dim=1),
            torch.cat(valids, dim=0),
            torch.cat([c.next_pos for c in caches]),
            length,
        )


DecodeState = RNNState | KVCache
