"""Frozen configuration dataclasses for models and training, with a JSON/TOML round trip.

Configs are values: nothing mutates them after construction, and every field is checked in
``__post_init__`` so a bad value fails where it is written, not deep inside a forward pass.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

RNN_CELLS = ("rnn_tanh", "rnn_relu", "gru", "lstm")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it and what is allowed."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


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
    tie_weights: bool = True
    """Share the embedding and output matrices (Press & Wolf 2017; Inan et al. 2017)."""

    def __post_init__(self) -> None:
        _check(self.family == "rnn", f"model.family must be 'rnn' for RNNConfig, got {self.family!r}")
        _check(self.cell in RNN_CELLS, f"model.cell must be one of {RNN_CELLS}, got {self.cell!r}")
        _check(self.vocab_size >= 1, f"model.vocab_size must be >= 1, got {self.vocab_size}")
        for name in ("n_embd", "n_hidden", "n_layer"):
            _check(getattr(self, name) >= 1, f"model.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("dropout", "emb_dropout"):
            v = getattr(self, name)
            _check(0.0 <= v < 1.0, f"model.{name} must be in [0, 1), got {v}")

    @property
    def max_context(self) -> int | None:
        """Recurrent models have no context limit."""
        return None


@dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """A pre-LayerNorm causal decoder (GPT-2 style) with RoPE or learned positions."""

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

    def __post_init__(self) -> None:
        _check(self.family == "transformer", f"model.family must be 'transformer', got {self.family!r}")
        _check(self.vocab_size >= 1, f"model.vocab_size must be >= 1, got {self.vocab_size}")
        for name in ("block_size", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            _check(getattr(self, name) >= 1, f"model.{name} must be >= 1, got {getattr(self, name)}")
        _check(
            self.n_embd % self.n_head == 0,
            f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})",
        )
        _check(
            self.pos_emb in ("rope", "learned"),
            f"model.pos_emb must be 'rope' or 'learned', got {self.pos_emb!r}",
        )
        if self.pos_emb == "rope":
            _check((self.n_embd // self.n_head) % 2 == 0, "RoPE needs an even head dimension")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")

    @property
    def max_context(self) -> int | None:
        return self.block_size


ModelConfig = RNNConfig | TransformerConfig
MODEL_CONFIGS: dict[str, type[RNNConfig] | type[TransformerConfig]] = {
    "rnn": RNNConfig,
    "transformer": TransformerConfig,
}


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the corpus is and how it is split and batched."""

    train: tuple[str, ...] = ()
    """Training text files, or one directory holding ``*train*``/``*valid*``/``*test*`` files."""
    valid: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    valid_fraction: float = 0.0
    """With no ``valid`` files: the last fraction of the training stream is held out."""
    batching: str = "auto"
    """``random`` windows, ``sequential`` partitioning (truncated BPTT), or ``auto`` by family."""
    cache_dir: str = ""
    """Where token files are cached (default: ``<out_dir>/data``)."""

    def __post_init__(self) -> None:
        _check(
            self.batching in ("auto", "random", "sequential"),
            f"data.batching must be 'auto', 'random' or 'sequential', got {self.batching!r}",
        )
        _check(0.0 <= self.valid_fraction < 1.0, f"data.valid_fraction must be in [0, 1), got {self.valid_fraction}")


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    """How to build the tokenizer (or ``path`` to reuse a saved one)."""

    kind: str = "char"
    vocab_size: int = 0
    """0 means: as large as the corpus gives (char, word); required for bpe/unigram."""
    path: str = ""
    min_freq: int = 1
    eos_at_newline: bool = True
    unk_policy: str = "byte_fallback"

    def __post_init__(self) -> None:
        _check(
            self.kind in ("char", "word", "bpe", "unigram"),
            f"tokenizer.kind must be one of char, word, bpe, unigram; got {self.kind!r}",
        )
        _check(self.vocab_size >= 0, f"tokenizer.vocab_size must be >= 0, got {self.vocab_size}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation, schedule, precision, evaluation and checkpointing."""

    out_dir: str = "runs/default"
    seed: int = 1337
    device: str = "auto"
    batch_size: int = 32
    """Global batch (rows per optimizer step, summed over accumulation and processes)."""
    seq_len: int = 64
    grad_accum: int = 1
    max_steps: int = 1000
    max_time: float = 0.0
    """Wall-clock budget in seconds (0 = none); the schedule follows whichever ends first."""
    optimizer: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    momentum: float = 0.0
    warmup_steps: int = 100
    schedule: str = "cosine"
    """``cosine``, ``linear``, ``constant`` or ``plateau`` (divide lr by ``plateau_factor``)."""
    plateau_factor: float = 4.0
    grad_clip: float = 1.0
    precision: str = "auto"
    """``fp32``, ``bf16`` (autocast), ``fp16`` (autocast + GradScaler, CUDA) or ``auto``."""
    compile: bool = False
    fsdp: bool = False
    """Shard a Transformer's parameters, gradients and optimizer state across ``torchrun``
    processes (FSDP) instead of replicating them (DDP); for models too large for one device."""
    eval_every: int = 200
    eval_batches: int = 0
    """Validation batches per evaluation (0 = the whole validation stream)."""
    patience: int = 0
    """Stop after this many evaluations without improvement (0 = never)."""
    save_every: int = 0
    """Save the resumable checkpoint every N steps (0 = at each evaluation)."""
    log_every: int = 10
    progress: bool = True
    on_nan: str = "stop"
    """``stop`` the run at a non-finite loss, or ``skip`` the step (counted)."""
    threads: int = 0
    """torch intra-op threads (0 = torch's default)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len", "grad_accum", "max_steps", "eval_every", "log_every"):
            _check(getattr(self, name) >= 1, f"train.{name} must be >= 1, got {getattr(self, name)}")
        _check(self.optimizer in ("adamw", "sgd"), f"train.optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        _check(
            self.schedule in ("cosine", "linear", "constant", "plateau"),
            f"train.schedule must be cosine, linear, constant or plateau; got {self.schedule!r}",
        )
        _check(
            self.precision in ("auto", "fp32", "bf16", "fp16"),
            f"train.precision must be auto, fp32, bf16 or fp16; got {self.precision!r}",
        )
        _check(self.on_nan in ("stop", "skip"), f"train.on_nan must be 'stop' or 'skip', got {self.on_nan!r}")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(self.batch_size % self.grad_accum == 0,
               f"train.batch_size ({self.batch_size}) must be divisible by train.grad_accum ({self.grad_accum})")
        _check(self.max_time >= 0, f"train.max_time must be >= 0, got {self.max_time}")
        _check(self.plateau_factor > 1, f"train.plateau_factor must be > 1, got {self.plateau_factor}")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything ``lmforge train`` needs: one TOML file with these four tables."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: dict[str, Any] = field(default_factory=dict)
    """Model fields without ``vocab_size`` (the tokenizer decides it); checked by ``model_config``."""
    train: TrainConfig = field(default_factory=TrainConfig)

    def model_config(self, vocab_size: int) -> ModelConfig:
        return model_config_from_dict({**self.model, "vocab_size": vocab_size})


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a TOML/JSON/CLI value to the annotated type, or raise a ConfigError naming ``key``."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing) | vars(dataclasses) | {"Literal": Literal})  # noqa: S307
    origin = typing.get_origin(annotation)
    if origin is Literal:
        if value not in typing.get_args(annotation):
            raise ConfigError(f"{key} must be one of {typing.get_args(annotation)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} has the wrong type: {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list of strings, got {value!r}")
        return tuple(str(v) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def dataclass_from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Build a frozen dataclass from a dict, rejecting unknown keys with the list of valid ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{prefix}] must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + '.' + k for k in unknown)}; "
            f"valid keys in [{prefix}]: {', '.join(valid)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a missing required field
        raise ConfigError(f"[{prefix}]: {exc}") from None


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """The model config for ``data['family']`` (``rnn`` or ``transformer``)."""
    family = data.get("family", "transformer")
    if family not in MODEL_CONFIGS:
        raise ConfigError(f"model.family must be one of {sorted(MODEL_CONFIGS)}, got {family!r}")
    return dataclass_from_dict(MODEL_CONFIGS[family], {**data, "family": family}, "model")


def run_config_from_dict(data: dict[str, Any]) -> RunConfig:
    valid = [f.name for f in fields(RunConfig)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(f"unknown table(s) {', '.join(unknown)}; valid tables: {', '.join(valid)}")
    model = dict(data.get("model", {}))
    if "vocab_size" in model:
        raise ConfigError("model.vocab_size is set by the tokenizer; remove it from [model]")
    # Validate the model table now (with a placeholder vocabulary) so errors surface early.
    model_config_from_dict({**model, "vocab_size": 1})
    return RunConfig(
        data=dataclass_from_dict(DataConfig, data.get("data", {}), "data"),
        tokenizer=dataclass_from_dict(TokenizerConfig, data.get("tokenizer", {}), "tokenizer"),
        model=model,
        train=dataclass_from_dict(TrainConfig, data.get("train", {}), "train"),
    )


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set table.key=value`` strings; values are parsed as TOML when they can be."""
    import tomllib

    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set expects table.key=value (e.g. train.lr=3e-4), got {item!r}")
        dotted, raw = item.split("=", 1)
        table, key = dotted.strip().split(".", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out.setdefault(table, {})
        if not isinstance(out[table], dict):
            raise ConfigError(f"--set {item!r}: {table} is not a table")
        out[table][key] = value
    return out


def load_run_config(path: str, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML run config and apply ``--set`` overrides."""
    import tomllib

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return run_config_from_dict(apply_overrides(data, overrides or []))


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    out = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
