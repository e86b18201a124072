"""The run configuration (``lmforge train``'s TOML): data, tokenizer, model and train tables.

Model configs live with the models (``lm.models.config``); this module adds the tables around
them and re-exports them, so a run config is one import.

Configs are values: nothing mutates them after construction, and every field is checked in
``__post_init__`` so a bad value fails where it is written, not deep inside a forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from lm.models.config import (
    MODEL_CONFIGS,
    ConfigError,
    ModelConfig,
    RNNConfig,
    TransformerConfig,
    check,
    check_at_least,
    check_choice,
    check_fraction,
    model_config_from_dict,
    parse_table,
    to_dict,
)
from tokenizer.kinds import IMPORTED_KIND
from tokenizer.kinds import KINDS as TOKENIZER_KINDS

__all__ = ["MODEL_CONFIGS", "ConfigError", "DataConfig", "ModelConfig", "RNNConfig", "RunConfig",
           "TokenizerConfig", "TrainConfig", "TransformerConfig", "apply_overrides", "load_run_config",
           "model_config_from_dict", "run_config_from_dict", "to_dict"]


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
        check_choice("data.batching", self.batching, ("auto", "random", "sequential"))
        check_fraction("data.valid_fraction", self.valid_fraction)


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
        check_choice("tokenizer.kind", self.kind, (*TOKENIZER_KINDS, IMPORTED_KIND))
        check(self.kind != IMPORTED_KIND or bool(self.path),
              f"tokenizer.kind {IMPORTED_KIND!r} is an imported model's own tokenizer: give tokenizer.path")
        check(self.vocab_size >= 0, f"tokenizer.vocab_size must be >= 0, got {self.vocab_size}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation, schedule, precision, evaluation and checkpointing."""

    out_dir: str = "runs/default"
    init_from: str = ""
    """A checkpoint (or run directory) to fine-tune: its weights, architecture and tokenizer,
    with a fresh optimizer and schedule (``lm.training.finetune``). Empty: a model from scratch."""
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
    """``adamw``; ``sgd``; ``muon`` (``torch.optim.Muon`` for the hidden matrices, its update
    scaled to AdamW's size so one ``lr`` and ``weight_decay`` serve both, with AdamW for
    embeddings, the head, norms and biases; Jordan et al. 2024); ``asgd`` (SGD, then averaged:
    see ``asgd_nonmono``)."""
    muon_momentum: float = 0.95
    """Muon's (Nesterov) momentum, for ``optimizer = "muon"``."""
    asgd_nonmono: int = 5
    """``optimizer = "asgd"``: start averaging the weights (``lm.training.averaging``) once
    validation has not improved for this many evaluations (NT-ASGD, AWD-LSTM's trigger)."""
    ema: float = 0.0
    """Evaluate and save an exponential moving average of the weights with this decay per step
    (e.g. 0.999; 0 = off); training continues on the raw weights (``lm.training.averaging``)."""
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
    samples: bool = True
    """At each evaluation, write a greedy and a seeded sample from a fixed prompt to the log and
    to metrics.jsonl (``lm.training.samples``)."""
    on_nan: str = "stop"
    """``stop`` the run at a non-finite loss, or ``skip`` the step (counted)."""
    threads: int = 0
    """torch intra-op threads (0 = the cores no other process keeps busy, re-counted during the
    run: ``lm.threads``). A fixed count also keeps a run bit-for-bit reproducible on CPU."""

    def __post_init__(self) -> None:
        names = ("batch_size", "seq_len", "grad_accum", "max_steps", "eval_every", "log_every")
        check_at_least(self, "train", names)
        check_choice("train.optimizer", self.optimizer, ("adamw", "sgd", "muon", "asgd"))
        check(0.0 <= self.ema < 1.0, f"train.ema must be in [0, 1), got {self.ema}")
        check(not (self.ema and self.optimizer == "asgd"),
              "train.ema and train.optimizer = 'asgd' both average the weights: choose one")
        check(not self.fsdp or not (self.ema or self.optimizer == "asgd"),
              "weight averaging (train.ema, train.optimizer = 'asgd') keeps a whole copy of the model: not with train.fsdp")
        check(not (self.fsdp and self.optimizer == "muon"),
              "train.optimizer = 'muon' orthogonalises whole matrices: not with train.fsdp, which shards them")
        check(self.asgd_nonmono >= 1, f"train.asgd_nonmono must be >= 1, got {self.asgd_nonmono}")
        check(0.0 <= self.muon_momentum < 1.0, f"train.muon_momentum must be in [0, 1), got {self.muon_momentum}")
        check_choice("train.schedule", self.schedule, ("cosine", "linear", "constant", "plateau"))
        check_choice("train.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        check_choice("train.on_nan", self.on_nan, ("stop", "skip"))
        check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        check(self.batch_size % self.grad_accum == 0,
               f"train.batch_size ({self.batch_size}) must be divisible by train.grad_accum ({self.grad_accum})")
        check(self.max_time >= 0, f"train.max_time must be >= 0, got {self.max_time}")
        check(self.plateau_factor > 1, f"train.plateau_factor must be > 1, got {self.plateau_factor}")


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
        data=parse_table(DataConfig, data.get("data", {}), "data"),
        tokenizer=parse_table(TokenizerConfig, data.get("tokenizer", {}), "tokenizer"),
        model=model,
        train=parse_table(TrainConfig, data.get("train", {}), "train"),
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
