"""lmforge's models, data, training, checkpoints, decoding and scoring.

The public surface, what the service and users call, is importable from ``lm`` itself:
``lm.load_checkpoint(dir, device=None) -> (model, tokenizer, config)``, ``lm.Pipeline``,
``lm.GenerationParams``, ``lm.decoding.generate``, ``lm.DecodeSession`` and its events, ``lm.score_texts``,
``lm.TextContext``. Names are imported on first use, so ``import lm`` (and ``lmforge --help``)
does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lm.checkpoint import CheckpointError, load_checkpoint
    from lm.context import TextContext
    from lm.decoding.engine import DecodeSession
    from lm.decoding.generate import generate
    from lm.decoding.params import (
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
    "DecodeSession": "decoding.engine", "generate": "decoding.generate", "Pipeline": "pipeline",
    "Completion": "decoding.params", "DoneEvent": "decoding.params", "FinishEvent": "decoding.params",
    "GenerationParams": "decoding.params", "ParamError": "decoding.params", "TokenEvent": "decoding.params", "ScoreResult": "score", "score_texts": "score",
}

__all__ = ["CheckpointError", "Completion", "DecodeSession", "DoneEvent", "FinishEvent", "GenerationParams",
           "ParamError", "Pipeline", "ScoreResult", "TextContext", "TokenEvent", "generate", "load_checkpoint",
           "score_texts"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'lm' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lm.{home}"), name)
