"""Recurrent language models: embedding -> stacked RNN/GRU/LSTM -> vocabulary (architecture only).

After pytorch/examples' word_language_model: the cell comes from ``torch.nn`` by name, dropout
sits on the embedding, between layers and on the output (Zaremba et al. 2014), and the output
matrix can be tied to the embedding (Press & Wolf 2017; Inan et al. 2017), through a linear
projection when the hidden size differs from the embedding size.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lm.models.config import RNNConfig
from lm.models.state import RNNState

_CELLS = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn_tanh": torch.rnn_tanh_cell,
          "rnn_relu": torch.rnn_relu_cell}
"""ATen's one-step function for each ``RNNConfig.cell`` (the math of ``nn.LSTM`` and kin)."""
_SEQUENCES = {"lstm": torch.lstm, "gru": torch.gru, "rnn_tanh": torch.rnn_tanh, "rnn_relu": torch.rnn_relu}
"""ATen's whole-sequence function for each cell (what ``nn.LSTM.forward`` calls), taking the
weights as arguments: the layer-by-layer path runs it on DropConnect'ed matrices."""


class RNNLM(nn.Module):
    """``forward(tokens [B, T], state=None) -> (logits [B, T, V], RNNState)``."""

    def __init__(self, cfg: RNNConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        between = cfg.dropout if cfg.n_layer > 1 else 0.0
        if cfg.cell == "lstm":
            self.rnn: nn.RNNBase = nn.LSTM(cfg.n_embd, cfg.n_hidden, cfg.n_layer, dropout=between, batch_first=True)
        elif cfg.cell == "gru":
            self.rnn = nn.GRU(cfg.n_embd, cfg.n_hidden, cfg.n_layer, dropout=between, batch_first=True)
        else:
            nonlinearity = cfg.cell.removeprefix("rnn_")
            self.rnn = nn.RNN(cfg.n_embd, cfg.n_hidden, cfg.n_layer, nonlinearity=nonlinearity,
                              dropout=between, batch_first=True)
        self.proj = nn.Linear(cfg.n_hidden, cfg.n_embd, bias=False) if cfg.tie_weights and cfg.n_hidden != cfg.n_embd else None
        self.decoder = nn.Linear(cfg.n_embd if self.proj is not None else cfg.n_hidden, cfg.vocab_size)
        if cfg.tie_weights:
            self.decoder.weight = self.embedding.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init = 0.1
        nn.init.uniform_(self.embedding.weight, -init, init)
        nn.init.zeros_(self.decoder.bias)
        if not self.config.tie_weights:
            nn.init.uniform_(self.decoder.weight, -init, init)

    @property
    def max_context(self) -> None:
        return None

    def initial_state(self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> RNNState:
        cfg = self.config
        ref = self.embedding.weight
        h = torch.zeros(cfg.n_layer, batch, cfg.n_hidden, device=device or ref.device, dtype=dtype or ref.dtype)
        return RNNState(h, torch.zeros_like(h) if cfg.cell == "lstm" else None)

    def forward(
        self,
        tokens: Tensor,
        state: RNNState | None = None,
        *,
        pad_mask: Tensor | None = None,
        use_cache: bool = True,  # noqa: ARG002 - the state is always returned (it is tiny)
        return_hidden: bool = False,
    ) -> tuple[Tensor, RNNState]:
        """Run ``tokens`` after ``state``; ``pad_mask`` ``[B, T]`` marks real tokens (left padding).

        Padded rows are shifted to right padding and packed, so each row's final state is taken
        after its own last real token and equals running that row alone.
        """
        B, T = tokens.shape
        x = self._drop(self._embed(tokens), self.config.emb_dropout)
        device = tokens.device.type
        fp32_recurrence = device == "cpu" and torch.is_autocast_enabled(device)
        if fp32_recurrence:
            x = x.float()
        if state is None:
            state = self.initial_state(B, tokens.device, x.dtype)
        hx = state.as_tuple()
        hx = tuple(h.to(x.dtype) for h in hx) if isinstance(hx, tuple) else hx.to(x.dtype)
        # Under CPU autocast the recurrence stays fp32: its state accumulates rounding over every
        # time step, and oneDNN's bf16 LSTM is barely faster at these sizes (bench/train.py); the
        # output projection, where the FLOPs are, still runs in bf16.
        with torch.autocast(device, enabled=False) if fp32_recurrence else contextlib.nullcontext():
            out, new = self._recur(x, hx, pad_mask)
        new_state = RNNState(*new) if isinstance(new, tuple) else RNNState(new)
        # 2-D for the output layer: batch_first LSTM output is a strided view (without dropout to
        # copy it, at eval), and F.linear on a strided 3-D input takes a batched path that copies
        # the whole [V, E] weight for every row -- 8x slower evaluation, measured.
        y = self._drop(out, self.config.dropout).reshape(B * T, out.shape[-1])
        if self.proj is not None:
            y = self.proj(y)
        if return_hidden:  # what ``output_layer`` takes: scoring applies it in slices (lm.losses)
            return y.view(B, T, y.shape[-1]), new_state
        return self.decoder(y).view(B, T, self.decoder.out_features), new_state

    @property
    def output_layer(self) -> nn.Linear:
        return self.decoder

    # ----------------------------------------------------------------------------- regularisers
    def _embed(self, tokens: Tensor) -> Tensor:
        """The embedding lookup; while training with ``word_dropout``, through a matrix whose
        dropped words' rows are zero (the tied output layer keeps the whole matrix)."""
        p = self.config.word_dropout
        if not self.training or p == 0:
            return self.embedding(tokens)
        weight = self.embedding.weight
        keep = torch.empty_like(weight[:, :1]).bernoulli_(1 - p) / (1 - p)
        return F.embedding(tokens, weight * keep)

    def _drop(self, x: Tensor, p: float) -> Tensor:
        """Dropout on ``[B, T, features]``: one mask per token, or with ``locked_dropout`` one per
        sequence for all its time steps."""
        if not self.training or p == 0:
            return x
        if not self.config.locked_dropout:
            return F.dropout(x, p, training=True)
        return x * (torch.empty_like(x[:, :1]).bernoulli_(1 - p) / (1 - p))

    def _recur_layers(self, x: Tensor, hx: Tensor | tuple[Tensor, Tensor]):  # noqa: ANN202
        """Training with ``weight_drop`` or ``locked_dropout``, which ``nn.LSTM`` cannot apply:
        each layer through ATen's sequence function on its own (DropConnect'ed) weights, the
        dropout between layers drawn here. The same parameters, so checkpoints do not change."""
        cfg = self.config
        run = _SEQUENCES[cfg.cell]
        lstm = isinstance(hx, tuple)
        hs = []
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.rnn.all_weights):
            if layer:
                x = self._drop(x, cfg.dropout)
            if cfg.weight_drop > 0:
                w_hh = F.dropout(w_hh, cfg.weight_drop, training=True)
            state = tuple(t[layer : layer + 1] for t in hx) if lstm else hx[layer : layer + 1]
            x, *new = run(x, state, [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0, True, False, True)  # (out, h[, c])
            hs.append(new)
        final = [torch.cat(parts) for parts in zip(*hs, strict=True)]
        return x, (tuple(final) if lstm else final[0])

    # ----------------------------------------------------------------------------- recurrence
    def _recur(self, x: Tensor, hx: Tensor | tuple[Tensor, Tensor], pad_mask: Tensor | None):  # noqa: ANN202
        T = x.shape[1]
        if T == 1 and pad_mask is None and not torch.is_grad_enabled() and not self.training:
            return self._step(x, hx)
        cfg = self.config
        if self.training and pad_mask is None and (cfg.weight_drop > 0 or cfg.locked_dropout):
            return self._recur_layers(x, hx)
        if pad_mask is None or bool(pad_mask.all()):
            out, new = self.rnn(x, hx)
        else:
            lengths = pad_mask.long().sum(1)
            if bool((lengths == 0).any()):
                raise ValueError("every row needs at least one real token")
            shift = T - lengths  # left pad per row
            idx = (torch.arange(T, device=x.device)[None, :] + shift[:, None]) % T
            x_right = x.gather(1, idx[:, :, None].expand_as(x))  # real tokens first
            packed = pack_padded_sequence(x_right, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out_packed, new = self.rnn(packed, hx)
            out_right, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=T)
            back = (torch.arange(T, device=x.device)[None, :] - shift[:, None]) % T
            out = out_right.gather(1, back[:, :, None].expand_as(out_right))  # left-padded again
        return out, new

    def _step(self, x: Tensor, hx: Tensor | tuple[Tensor, Tensor]):  # noqa: ANN202
        """One time step of every layer through ATen's cell functions (``torch.lstm_cell`` and
        kin), for decoding: ``nn.LSTM`` on CPU builds a oneDNN primitive per call, 230 us a
        layer at 200 units and one row, where the cell's two products and its gates take 30
        (``bench/decode.py``'s LSTM rows). Same weights and math; the order of float additions
        differs, so values agree to rounding, not bit for bit."""
        cell = _CELLS[self.config.cell]
        lstm = isinstance(hx, tuple)
        h_all, c_all = hx if lstm else (hx, None)
        inp = x[:, 0]
        hs, cs = [], []
        for layer, weights in enumerate(self.rnn.all_weights):  # per layer: w_ih, w_hh, b_ih, b_hh
            if lstm:
                h, c = cell(inp, (h_all[layer], c_all[layer]), *weights)
                cs.append(c)
            else:
                h = cell(inp, h_all[layer], *weights)
            hs.append(h)
            inp = h
        out = inp[:, None]
        h_new = torch.stack(hs)
        return out, ((h_new, torch.stack(cs)) if lstm else h_new)
