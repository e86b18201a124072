"""Model configurations: frozen dataclasses, checked where they are written, parsed through
pydantic from TOML/JSON tables.

The architectures (``lm.models.rnn``, ``lm.models.transformer``) take these; the run config
(``lm.config``) and checkpoints build them with ``model_config_from_dict``. ``parse_table`` is
the one parser for every config table: unknown keys are listed with the valid ones, a wrong type
names the key and the type it needs, and a value the dataclass rejects keeps its own message.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from dataclasses import dataclass
from typing import Any, Literal

import pydantic

RNN_CELLS = ("rnn_tanh", "rnn_relu", "gru", "lstm")
ACTIVATIONS = ("gelu_tanh", "gelu", "silu", "relu2")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it and what is allowed."""


def check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def check_choice(key: str, value: object, choices: typing.Sequence[str]) -> None:
    """``value`` is one of ``choices``, else a ``ConfigError`` listing them."""
    check(value in choices, f"{key} must be one of {', '.join(choices)}; got {value!r}")


def check_at_least(config: object, table: str, names: typing.Iterable[str], low: int = 1) -> None:
    """Each named field of ``config`` is ``>= low``."""
    for name in names:
        value = getattr(config, name)
        check(value >= low, f"{table}.{name} must be >= {low}, got {value}")


def check_fraction(key: str, value: float) -> None:
    """``value`` is a fraction in ``[0, 1)`` (a dropout rate, a held-out share)."""
    check(0.0 <= value < 1.0, f"{key} must be in [0, 1), got {value}")


@dataclass(frozen=True, kw_only=True)
class RNNConfig:
    """A recurrent LM: embedding -> stacked RNN/GRU/LSTM -> (projection) -> vocabulary."""

    family: Literal["rnn"] = "rnn"
    vocab_size: int
    cell: str = "lstm"
    n_embd: int = 200
    n_hidden: int = 200
    n_layer: int = 2
    dropout: float = 0.2
    """Dropout between recurrent layers and on the output (Zaremba et al. 2014)."""
    emb_dropout: float = 0.1
    """Dropout on the embedding's output, the recurrence's input (AWD-LSTM's ``dropouti``)."""
    tie_weights: bool = True
    """Share the embedding and output matrices (Press & Wolf 2017; Inan et al. 2017)."""
    locked_dropout: bool = False
    """The three dropouts above draw one mask per sequence, shared by its time steps, instead of
    one per token (variational dropout, Gal & Ghahramani 2016; AWD-LSTM's LockedDropout)."""
    weight_drop: float = 0.0
    """DropConnect on each layer's hidden-to-hidden matrix while training, one mask per batch
    (AWD-LSTM's WeightDrop, Merity et al. 2018): regularises the recurrence itself."""
    word_dropout: float = 0.0
    """Drop whole words while training: rows of the embedding matrix zeroed for the batch and
    the rest rescaled (AWD-LSTM's embedding dropout, ``dropoute``)."""

    def __post_init__(self) -> None:
        check(self.family == "rnn", f"model.family must be 'rnn' for RNNConfig, got {self.family!r}")
        check_choice("model.cell", self.cell, RNN_CELLS)
        check_at_least(self, "model", ("vocab_size", "n_embd", "n_hidden", "n_layer"))
        for name in ("dropout", "emb_dropout", "weight_drop", "word_dropout"):
            check_fraction(f"model.{name}", getattr(self, name))

    @property
    def max_context(self) -> int | None:
        """Recurrent models have no context limit."""
        return None


@dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """A pre-norm causal decoder with RoPE or learned positions: GPT-2's block by default; the
    knobs below cover GPT-NeoX/Pythia (parallel residual, partial rotary, exact GELU) and Llama
    (RMSNorm, SwiGLU, grouped-query attention) with the same class, LitGPT's way."""

    family: Literal["transformer"] = "transformer"
    vocab_size: int
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.0
    bias: bool = False
    pos_emb: str = "rope"
    rope_base: float = 10000.0
    tie_weights: bool = True
    rotary_fraction: float = 1.0
    """RoPE on this share of each head's dimensions, the first ones (Pythia: 0.25)."""
    parallel_residual: bool = False
    """Attention and MLP read the same input and add to the residual together (GPT-NeoX, Pythia)."""
    activation: str = "gelu_tanh"
    """The MLP's activation: GELU's tanh approximation (GPT-2), exact GELU (``gelu``: Pythia) or
    SiLU (``silu``: Llama's SwiGLU, with ``gated_mlp``) or squared ReLU (``relu2``: So et al.
    2021, the modded-nanoGPT speedrun's)."""
    gated_mlp: bool = False
    """A gated MLP, ``down(act(gate(x)) * up(x))`` (GLU variants, Shazeer 2020; Llama)."""
    mlp_hidden: int | None = None
    """The MLP's hidden width; unset, ``mlp_ratio * n_embd`` (Llama's ``intermediate_size`` is
    not a multiple of its width)."""
    norm: str = "layernorm"
    """``layernorm`` (GPT-2, NeoX; biased when ``bias``) or ``rmsnorm`` (Llama; never biased)."""
    norm_eps: float = 1e-5
    n_kv_head: int | None = None
    """Key/value heads, each shared by ``n_head / n_kv_head`` query heads (grouped-query
    attention, Ainslie et al. 2023); unset, one per query head. The KV cache shrinks with it."""
    qk_norm: bool = False
    """RMS-normalise each head's queries and keys (learned gains) before RoPE: bounded attention
    logits, which tolerate higher learning rates (Dehghani et al. 2023; OLMo 2, Qwen 3)."""
    logit_softcap: float = 0.0
    """Squash the output logits to ``(-cap, cap)`` as ``cap * tanh(logits / cap)`` (Gemma 2;
    the speedruns use 15-30); 0 = off."""

    def __post_init__(self) -> None:
        check(self.family == "transformer", f"model.family must be 'transformer', got {self.family!r}")
        names = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio")
        check_at_least(self, "model", names)
        check(
            self.n_embd % self.n_head == 0,
            f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})",
        )
        check_choice("model.pos_emb", self.pos_emb, ("rope", "learned"))
        if self.pos_emb == "rope":
            check((self.n_embd // self.n_head) % 2 == 0, "RoPE needs an even head dimension")
            check(0 < self.rotary_fraction <= 1 and self.rotary_dims % 2 == 0 and self.rotary_dims > 0,
                  f"model.rotary_fraction ({self.rotary_fraction}) must rotate an even number of a head's "
                  f"{self.n_embd // self.n_head} dimensions")
        check(self.pos_emb == "rope" or self.rotary_fraction == 1.0, "model.rotary_fraction applies to RoPE only")
        check_choice("model.activation", self.activation, ACTIVATIONS)
        check_choice("model.norm", self.norm, ("layernorm", "rmsnorm"))
        check(0 < self.norm_eps < 1, f"model.norm_eps must be in (0, 1), got {self.norm_eps}")
        check(self.mlp_hidden is None or self.mlp_hidden >= 1, f"model.mlp_hidden must be >= 1, got {self.mlp_hidden}")
        kv = self.kv_heads
        check(1 <= kv <= self.n_head and self.n_head % kv == 0,
              f"model.n_kv_head ({kv}) must divide model.n_head ({self.n_head})")
        check_fraction("model.dropout", self.dropout)
        check(self.logit_softcap >= 0, f"model.logit_softcap must be >= 0 (0 = off), got {self.logit_softcap}")

    @property
    def max_context(self) -> int | None:
        return self.block_size

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        """The MLP's hidden width (``mlp_hidden``, else ``mlp_ratio * n_embd``)."""
        return self.mlp_ratio * self.n_embd if self.mlp_hidden is None else self.mlp_hidden

    @property
    def rotary_dims(self) -> int:
        """The head dimensions RoPE rotates (the first ones)."""
        return int(self.n_embd // self.n_head * self.rotary_fraction)


ModelConfig = RNNConfig | TransformerConfig
MODEL_CONFIGS: dict[str, type[RNNConfig] | type[TransformerConfig]] = {
    "rnn": RNNConfig,
    "transformer": TransformerConfig,
}



_KINDS = {"int_type": "an integer", "int_parsing": "an integer", "float_type": "a number",
          "float_parsing": "a number", "bool_type": "true or false", "bool_parsing": "true or false",
          "string_type": "a string", "tuple_type": "a list of strings", "list_type": "a list of strings"}


@functools.cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(cls)


@functools.cache
def _tuple_fields(cls: type) -> frozenset[str]:
    hints = typing.get_type_hints(cls)
    return frozenset(k for k, v in hints.items() if typing.get_origin(v) is tuple)


def parse_table(cls: type, data: Any, prefix: str) -> Any:
    """Build the frozen dataclass ``cls`` from a TOML/JSON table named ``[prefix]``.

    Types are strict (``lr = "0.1"`` is an error, not a float); a list of strings may also be
    given as one string. Validation runs in pydantic's JSON mode, where TOML's lists fill
    tuples and integers fill floats, as in the file."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{prefix}] must be a table, got {data!r}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + '.' + k for k in unknown)}; "
            f"valid keys in [{prefix}]: {', '.join(valid)}"
        )
    data = {k: [v] if k in _tuple_fields(cls) and isinstance(v, str) else v for k, v in data.items()}
    try:
        return _adapter(cls).validate_json(json.dumps(data, default=str), strict=True)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] == "value_error" and isinstance(error.get("ctx", {}).get("error"), ConfigError):
            raise error["ctx"]["error"] from None  # the dataclass's own check, message as written
        key = f"{prefix}.{error['loc'][0]}" if error["loc"] else f"[{prefix}]"
        if error["type"] == "missing":
            raise ConfigError(f"{key} is required") from None
        if error["type"] == "literal_error":
            raise ConfigError(f"{key} must be {error['ctx']['expected']}, got {error['input']!r}") from None
        kind = _KINDS.get(error["type"])
        if kind is None:
            raise ConfigError(f"{key}: {error['msg']}, got {error['input']!r}") from None
        raise ConfigError(f"{key} must be {kind}, got {error['input']!r}") from None


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """The model config for ``data['family']`` (``rnn`` or ``transformer``)."""
    family = data.get("family", "transformer")
    if family not in MODEL_CONFIGS:
        raise ConfigError(f"model.family must be one of {sorted(MODEL_CONFIGS)}, got {family!r}")
    return parse_table(MODEL_CONFIGS[family], {**data, "family": family}, "model")


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    out = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
