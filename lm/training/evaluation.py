"""Validation and test loss: mean NLL per token over a token stream, in the precision the run
trains in, with a recurrent model's state carried from batch to batch as in training."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from lm.losses import token_nll
from lm.training.data import eval_batches

EVAL_ROWS = 32
"""Rows per evaluation batch at most (fewer when the training batch is smaller)."""


@torch.inference_mode()
def mean_loss(
    model: nn.Module,
    tokens: np.ndarray,
    *,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    carry_state: bool,
    max_batches: int = 0,
    progress: bool = False,
) -> float:
    """Mean NLL per token over ``tokens`` cut into ``seq_len`` windows (``max_batches`` of them
    at most, 0 = all); ``carry_state`` passes each batch's final state to the next.
    ``progress`` shows an ``eval`` bar (a full evaluation can take as long as many steps)."""
    from tqdm.auto import tqdm

    model.eval()
    batches = eval_batches(tokens, min(batch_size, EVAL_ROWS), seq_len)
    n = batches.steps_per_epoch if not max_batches else min(max_batches, batches.steps_per_epoch)
    total, count, state = 0.0, 0, None
    for i in tqdm(range(n), desc="eval", leave=False, disable=not progress, dynamic_ncols=True):
        x, y, _ = batches.batch(i)
        x, y = x.to(device), y.to(device)
        with autocast():
            logits, state = model(x, state if carry_state else None, use_cache=False)
        total += float(token_nll(logits, y).sum())
        count += y.numel()
    return total / max(count, 1)
