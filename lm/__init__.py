"""lmforge's models, data, training, checkpoints, decoding and scoring.

The public surface, what the service and users call, is importable from ``lm`` itself:
``lm.load_checkpoint(dir, device=None) -> (model, tokenizer, config)``, ``lm.Pipeline``,
``lm.GenerationParams``, ``lm.generate``, ``lm.DecodeSession`` and its events, ``lm.score_texts``,
``lm.TextContext``. Names are imported on first use, so ``import lm`` (and ``lmforge --help``)
does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lm.checkpoint import CheckpointError, load_checkpoint
    from lm.context import TextContext
    from lm.engine import DecodeSession
    from lm.generate import generate
    from lm.params import (
        Completion,
        DoneEvent,
        FinishEvent,
        GenerationParams,
        ParamError,
        TokenEvent,
    )
    from lm.pipeline import Pipeline
    from lm.score import ScoreResult, score_texts

_HOMES = {
    "load_checkpoint": "checkpoint", "CheckpointError": "checkpoint", "TextContext": "context",
    "DecodeSession": "engine", "generate": "generate", "Pipeline": "pipeline",
    "Completion": "params", "DoneEvent": "params", "FinishEvent": "params", "GenerationParams": "params",
    "ParamError": "params", "TokenEvent": "params", "ScoreResult": "score", "score_texts": "score",
}

__all__ = ["CheckpointError", "Completion", "DecodeSession", "DoneEvent", "FinishEvent", "GenerationParams",
           "ParamError", "Pipeline", "ScoreResult", "TextContext", "TokenEvent", "generate", "load_checkpoint",
           "score_texts"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'lm' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lm.{home}"), name)
