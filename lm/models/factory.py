"""Build a model from its config, and the helpers every model family shares."""

from __future__ import annotations

import torch
from torch import nn

from lm.models.config import ModelConfig, RNNConfig, TransformerConfig
from lm.models.rnn import RNNLM
from lm.models.state import DecodeState
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
