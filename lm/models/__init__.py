"""Model families behind one interface: ``logits, state = model(tokens, state=None)``."""

from __future__ import annotations

import torch
from torch import nn

from lm.config import ModelConfig, RNNConfig, TransformerConfig
from lm.models.rnn import RNNLM
from lm.models.state import DecodeState, KVCache, RNNState
from lm.models.transformer import TransformerLM


def build_model(config: ModelConfig) -> nn.Module:
    """The model for a config: ``RNNLM`` or ``TransformerLM``."""
    if isinstance(config, RNNConfig):
        return RNNLM(config)
    if isinstance(config, TransformerConfig):
        return TransformerLM(config)
    raise TypeError(f"not a model config: {config!r}")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (CPU for a parameterless model)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def concat_states(states: list[DecodeState]) -> DecodeState:
    """Join per-prompt states along the batch (whatever their family)."""
    return type(states[0]).concat(states)  # type: ignore[arg-type]


__all__ = ["build_model", "concat_states", "model_device", "RNNLM", "TransformerLM", "RNNState", "KVCache", "DecodeState"]
