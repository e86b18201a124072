"""Model families behind one interface: ``logits, state = model(tokens, state=None)``.

Each architecture lives here with its own config (``lm.models.config``). Names are imported on
first use, so reading a config (``lm.models.config``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lm.models.config import ModelConfig, RNNConfig, TransformerConfig
    from lm.models.factory import build_model, concat_states, model_device
    from lm.models.rnn import RNNLM
    from lm.models.state import DecodeState, KVCache, RNNState
    from lm.models.transformer import TransformerLM

_HOMES = {
    "ModelConfig": "config", "RNNConfig": "config", "TransformerConfig": "config",
    "build_model": "factory", "concat_states": "factory", "model_device": "factory",
    "RNNLM": "rnn", "TransformerLM": "transformer",
    "DecodeState": "state", "KVCache": "state", "RNNState": "state",
}

__all__ = ["RNNLM", "DecodeState", "KVCache", "ModelConfig", "RNNConfig", "RNNState", "TransformerConfig",
           "TransformerLM", "build_model", "concat_states", "model_device"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'lm.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lm.models.{home}"), name)
