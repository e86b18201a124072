"""lmforge's models, data, training, checkpoints, decoding and scoring.

``lm.load_checkpoint(dir, device=None) -> (model, tokenizer, config)`` is the one loader the CLI,
the tests and the server share (``lm.checkpoint.load_checkpoint``). It is imported on first use,
so ``import lm`` (and ``lmforge --help``) does not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lm.checkpoint import load_checkpoint

__all__ = ["load_checkpoint"]


def __getattr__(name: str) -> Any:
    if name == "load_checkpoint":
        from lm.checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'lm' has no attribute {name!r}")
