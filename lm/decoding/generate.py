"""Greedy, sampled and beam-search generation over token ids (or strings).

``generate`` is a loop over a ``DecodeSession`` (``lm.decoding.engine``), the same step-wise decoder the
server drives, so batch results, streamed results and served results cannot differ.
"""

from __future__ import annotations

import torch
from torch import nn

from lm.context import TextContext
from lm.decoding.engine import DecodeSession
from lm.decoding.params import Completion, FinishEvent, GenerationParams

__all__ = ["generate"]


def generate(
    model: nn.Module,
    tokenizer,
    prompts: list[list[int]] | list[str],
    params: GenerationParams,
    *,
    device: torch.device | str | None = None,
    context: TextContext | None = None,
) -> list[list[Completion]]:
    """Continue each prompt; one list of ``params.num_return_sequences`` completions per prompt
    (beam search: best first).

    Prompts are strings (encoded with ``tokenizer``) or token ids. All prompts decode in one
    batch (up to 64 rows at a time; the rest join as rows free up), with results identical to
    decoding each alone. ``context`` is the checkpoint's text start and context length
    (``lm.context``; by default the trainer's rule applied to ``tokenizer`` and the model).
    """
    session = DecodeSession(model, tokenizer, context=context, device=device, max_batch_rows=max(64, params.rows))
    for i, prompt in enumerate(prompts):
        session.add(i, tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt), params)
    results: list[list[Completion | None]] = [[None] * params.num_return_sequences for _ in prompts]
    while session.active:
        for event in session.step():
            if isinstance(event, FinishEvent):
                results[event.request_id][event.index] = event.completion  # type: ignore[index]
    return [[c for c in per_prompt if c is not None] for per_prompt in results]
