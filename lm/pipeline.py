"""Tokenizer + model + device: text in, text out. What the CLI and the HTTP service call."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from lm.checkpoint import load_checkpoint, resolve_checkpoint_dir
from lm.config import ModelConfig
from lm.engine import DecodeSession, Event, model_device
from lm.generate import generate
from lm.params import Completion, GenerationParams
from lm.score import ScoreResult, score_texts

log = logging.getLogger(__name__)


DECODE_ROWS = 8
"""Rows of the product used to pick each weight's memory layout: a typical decode batch."""


def _faster_layout(rows: int, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None,
                   reps: int = 7) -> torch.Tensor:
    """Whichever of two layouts of one weight is faster over decode batches of 1, ``rows`` and
    4 x ``rows`` rows (summed times: the heavily loaded case weighs most): best of ``reps`` runs
    each, taking turns, so that load from elsewhere hits both alike."""
    import time

    linear = torch.nn.functional.linear
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(m, a.shape[1], generator=gen).to(a.dtype) for m in (1, rows, 4 * rows)]
    total = [0.0, 0.0]
    for x in xs:
        best = [float("inf"), float("inf")]
        for w in (a, b):
            linear(x, w, bias)
        for _ in range(reps):
            for i, w in enumerate((a, b)):
                start = time.perf_counter()
                linear(x, w, bias)
                best[i] = min(best[i], time.perf_counter() - start)
        total = [t + bt for t, bt in zip(total, best, strict=True)]
    return a if total[0] <= total[1] else b


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode with each ``nn.Linear`` weight in its faster memory layout.

    ``F.linear(x, W)`` multiplies by ``W.T``. With ``W`` stored row-major (PyTorch's default)
    that is a transposed GEMM; stored as the transpose of a contiguous ``[in, out]`` matrix
    (column-major, as HF's GPT-2 keeps its weights) it is a plain one. On CPU, at the few rows
    per step that decoding multiplies, the two run up to 2x apart. In fp32, column-major wins in
    the whole model at every batch size measured (``bench/decode.py``, ``bench/serve_load.py``),
    so every fp32 weight gets it. In bf16 the winner depends on the shape (row-major for the
    block matrices, column-major for a 10k-word output layer), so each distinct bf16 (shape,
    dtype) is timed once both ways at 1, ``DECODE_ROWS`` and 4 x ``DECODE_ROWS`` rows and the
    faster kept (bf16 greedy decoding of the 6x6x384 model: 1.3x the all-column speed). Shape and
    values are unchanged, only strides; large-batch scoring is unaffected. For inference only:
    safetensors refuses to save non-contiguous tensors, so save a model before, not after.
    """
    chosen: dict[tuple, bool] = {}
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.Linear) or not module.weight.is_contiguous():
                continue
            w = module.weight.data
            column = w.t().contiguous().t()
            if w.device.type != "cpu" or w.dtype == torch.float32:
                # fp32: column-major measured faster in the whole model at every batch size
                # (bench/decode.py, bench/serve_load.py); only low precision is shape-dependent
                module.weight.data = column
                continue
            key = (tuple(w.shape), w.dtype, module.bias is not None)
            if key not in chosen:
                bias = module.bias.data if module.bias is not None else None
                chosen[key] = _faster_layout(DECODE_ROWS, column, w, bias) is column
            if chosen[key]:
                module.weight.data = column
    return model.eval()


class Pipeline:
    """A loaded checkpoint ready to generate and score."""

    def __init__(self, model: nn.Module, tokenizer, config: ModelConfig, *, name: str = "model",
                 device: torch.device | None = None) -> None:
        self.name = name
        self.model = prepare_for_inference(model)
        self.tokenizer = tokenizer
        self.config = config
        self.device = device if device is not None else model_device(model)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, device: str | torch.device | None = None,
                        name: str | None = None, dtype: torch.dtype | None = None) -> Pipeline:
        """Load a checkpoint (or a run directory's best/latest one) onto ``device`` (default:
        cuda, else mps, else cpu), optionally cast to ``dtype`` (e.g. ``torch.bfloat16``)."""
        directory = resolve_checkpoint_dir(path)
        model, tokenizer, config = load_checkpoint(directory, device=device, dtype=dtype)
        name = name or Path(path).resolve().name
        log.info("loaded %s (%s, %s) from %s", name, config.family, dtype or "fp32", directory)
        return cls(model, tokenizer, config, name=name)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def generate(self, prompts: list[str], params: GenerationParams) -> list[list[Completion]]:
        """Completions for each prompt (see ``lm.generate.generate``)."""
        return generate(self.model, self.tokenizer, prompts, params, device=self.device)

    def stream(self, prompt: str, params: GenerationParams) -> Iterator[Event]:
        """Events as they happen: a ``TokenEvent`` per token (its ``text`` deltas concatenate to
        the completion's text), then a ``FinishEvent`` per sequence (beam search: only those)."""
        session = self.session(max(1, params.rows))
        session.add(0, self.encode(prompt), params)
        while session.active:
            yield from session.step()

    def score(self, texts: list[str], *, stride: int | None = None, token_logprobs: bool = False) -> list[ScoreResult]:
        """Perplexity and friends per text (see ``lm.score``)."""
        return score_texts(self.model, self.tokenizer, texts, stride=stride, token_logprobs=token_logprobs,
                           device=self.device)

    def session(self, max_batch_rows: int = 64) -> DecodeSession:
        """A fresh step-wise decoder over this model (the server's continuous batching)."""
        return DecodeSession(self.model, self.tokenizer, device=self.device, max_batch_rows=max_batch_rows)
