"""Checkpoints: self-describing directories, written atomically, loaded without running code.

A checkpoint directory holds ``config.json`` (format, version, model, tokenizer and training
metadata), ``model.safetensors`` (weights only, never a pickle), the tokenizer's own files and,
for resumable checkpoints, ``trainer_state.pt`` (tensors and plain containers only, loaded with
``weights_only=True``).

A *run directory* written by the trainer holds several step checkpoints, a ``latest`` pointer
file replaced atomically after each complete write, and ``best/`` (best validation loss).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from lm.chat_template import ChatTemplate, ChatTemplateError, read_template
from lm.config import ConfigError, ModelConfig, model_config_from_dict, to_dict
from lm.context import ContextError, TextContext, trained_length
from lm.devices import resolve_device
from lm.example import Example, ExampleError
from lm.models import build_model
from lm.quantize import QUANTIZATION, is_int8, quantize_int8
from tokenizer import Tokenizer, TokenizerError, load_tokenizer
from tokenizer.io import fsync_dir, read_regular_file

log = logging.getLogger(__name__)

FORMAT = "lmforge"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINER_STATE_FILE = "trainer_state.pt"
LATEST_FILE = "latest"
MAX_BLOCK_SIZE = 1 << 20
"""The longest context a loaded checkpoint may claim (its RoPE tables are built for all of it)."""
MAX_CONFIG_BYTES = 16 << 20
"""``config.json`` is a few kilobytes; anything past this is not one."""


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or inconsistent; the message says which part."""


def _fsync_tree(path: Path) -> None:
    for p in path.iterdir():
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(path)


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module,
    tokenizer: Tokenizer,
    *,
    training: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    context: TextContext | None = None,
    example: Example | None = None,
    chat_template: ChatTemplate | None = None,
) -> Path:
    """Write a checkpoint directory atomically (temporary sibling, fsync, rename).

    ``example`` is the prompt and decoding settings the playground opens with (``lm.example``);
    ``chat_template`` how chats become prompts (``lm.chat_template``; none: the default).

    ``context`` records what a text starts from and the context length the model was trained
    on (``lm.context``); without it, the trainer's rule is applied to the tokenizer and the
    model's whole ``block_size``.

    ``dtype`` stores the weights in another precision (e.g. ``torch.bfloat16`` to halve the size
    of a shipped model); loading converts back to the model's dtype. ``state_dict`` supplies the
    weights when ``model`` cannot (a sharded FSDP model: its gathered full state dict).
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        config: ModelConfig = model.config  # type: ignore[assignment]
        if context is None:
            context = TextContext.derive(tokenizer, config.max_context)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "model": to_dict(config),
            "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size},
            "context": context.to_dict(tokenizer),
            "training": training or {},
        }
        if example is not None:
            meta["example"] = example.to_dict()
        if chat_template is not None:
            meta["chat_template"] = chat_template.to_dict()
        if is_int8(model):  # its int8 layers as they are (lm.quantize)
            if dtype is not None or state_dict is not None:
                raise ValueError("an int8 model is saved as it is (no dtype, no state_dict)")
            meta["quantization"] = QUANTIZATION
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        to_save = model
        if dtype is not None or state_dict is not None:
            with torch.random.fork_rng(devices=[]):  # a training run's random stream stays untouched
                to_save = build_model(config)
            to_save.load_state_dict(model.state_dict() if state_dict is None else state_dict)
            if dtype is not None:
                to_save = to_save.to(dtype)
        with _write_errors_as_os_errors(tmp, WEIGHTS_FILE):
            save_model(to_save, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        tokenizer.save(tmp)
        if trainer_state is not None:
            with _write_errors_as_os_errors(tmp, TRAINER_STATE_FILE):
                torch.save(trainer_state, tmp / TRAINER_STATE_FILE)
        _fsync_tree(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


STEP_NAME = re.compile(r"^step-\d{8}$")
"""What ``latest`` may hold: the name of a step checkpoint beside it, nothing else."""


def latest_checkpoint(run_dir: Path) -> Path:
    """The step checkpoint ``run_dir/latest`` points at. The pointer must name a complete
    ``step-NNNNNNNN`` directory inside the run: a path elsewhere (``../other/step-300``, an
    absolute path), garbage or an empty file is a ``CheckpointError`` naming ``latest``."""
    latest = run_dir / LATEST_FILE
    if not latest.is_file():
        raise CheckpointError(f"{run_dir}: nothing to resume (no {LATEST_FILE} pointer)")
    try:
        name = latest.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{latest}: unreadable pointer ({exc})") from None
    if not STEP_NAME.match(name):
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise CheckpointError(f"{latest}: corrupt pointer {shown!r} (it must name a step-NNNNNNNN directory of this run)")
    if not (run_dir / name / CONFIG_FILE).is_file():
        raise CheckpointError(f"{latest} points at {name!r}, which is not a complete checkpoint")
    return run_dir / name


def resolve_checkpoint_dir(path: str | os.PathLike[str], *, prefer_best: bool = True) -> Path:
    """A checkpoint directory itself, or the one a run directory points at (``best/`` or ``latest``)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint directory")
    if (p / CONFIG_FILE).is_file():
        return p
    if prefer_best and (p / "best" / CONFIG_FILE).is_file():
        return p / "best"
    if (p / LATEST_FILE).is_file():
        return latest_checkpoint(p)
    raise CheckpointError(f"{p}: not a checkpoint (no {CONFIG_FILE}) and not a run directory (no {LATEST_FILE})")


def read_config(directory: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The model config and the whole metadata of a checkpoint, validated."""
    cfg_path = directory / CONFIG_FILE
    try:
        meta = json.loads(read_regular_file(cfg_path, MAX_CONFIG_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{cfg_path}: missing") from None
    except TokenizerError as exc:  # not a regular file, or too large
        raise CheckpointError(str(exc)) from None
    except OSError as exc:
        raise CheckpointError(f"{cfg_path}: cannot read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: not an lmforge checkpoint config (format must be {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{cfg_path}: unsupported version {meta.get('version')!r} (this lmforge reads {VERSION})")
    unknown = sorted(set(meta) - {"format", "version", "model", "tokenizer", "context", "training", "example",
                             "chat_template", "quantization"})
    if unknown:
        raise CheckpointError(f"{cfg_path}: unknown field(s) {', '.join(unknown)}")
    if meta.get("quantization", QUANTIZATION) != QUANTIZATION:
        raise CheckpointError(f"{cfg_path}: quantization must be {QUANTIZATION!r}, got {meta['quantization']!r}")
    try:
        config = model_config_from_dict(meta.get("model") or {})
    except ConfigError as exc:
        raise CheckpointError(f"{cfg_path}: {exc}") from None
    return config, meta


def load_checkpoint(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> tuple[nn.Module, Tokenizer, ModelConfig]:
    """Load ``(model, tokenizer, config)``; the model is in ``eval()`` mode on ``device``.

    The one loader shared by the CLI, the tests and the server. Nothing in the directory is
    executed: weights come from safetensors, the config from JSON. An int8 checkpoint loads int8
    (``dtype`` casts the rest: embeddings, norms, biases).
    """
    directory = resolve_checkpoint_dir(path)
    config, meta = read_config(directory)
    try:
        tok = load_tokenizer(directory)
    except TokenizerError as exc:
        raise CheckpointError(f"{directory}: tokenizer: {exc}") from None
    if tok.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{directory}: tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {config.vocab_size}"
        )
    check_weights_fit(config, directory / WEIGHTS_FILE)
    model = build_model(config)
    if "quantization" in meta:  # lmforge export --dtype int8: the int8 layers are in the file
        quantize_int8(model, quantize=False)
    load_weights_into(model, directory)
    device = resolve_device(device)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    return model, tok, config


def weight_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the safetensors header alone (no tensor is read)."""
    try:
        mode = weights.stat().st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{weights}: missing") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{weights}: not a regular file (a FIFO, device or socket is never read)")
    try:
        with safe_open(str(weights), "pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({exc})") from None


def check_weights_fit(config: ModelConfig, weights: Path) -> None:
    """Refuse a config the weights file does not describe, before anything is allocated: a
    hostile or mistaken ``config.json`` (``n_embd: 1e9``, ``n_layer: 1e7``) would otherwise
    build terabytes or spend minutes building. Every size in the config is bounded by the
    header first (no width beyond the widest tensor, no more layers than tensors); then the
    model is built on the ``meta`` device (shapes only, no memory) and every tensor's shape
    must match the header's."""
    if getattr(config, "block_size", 0) > MAX_BLOCK_SIZE:
        raise CheckpointError(f"{weights.parent / CONFIG_FILE}: model.block_size = {config.block_size} is over the "
                              f"{MAX_BLOCK_SIZE:,} positions lmforge builds position tables for")
    shapes = weight_shapes(weights)
    widest = max((max(shape) for shape in shapes.values() if shape), default=0)
    sizes = {k: v for k, v in to_dict(config).items()
             if isinstance(v, int) and not isinstance(v, bool) and k not in ("block_size", "mlp_ratio")}
    for key, value in sizes.items():
        limit = len(shapes) if key == "n_layer" else widest
        if value > limit:
            what = "tensors in it" if key == "n_layer" else "its widest tensor dimension"
            raise CheckpointError(f"{weights}: weights do not match config.json: model.{key} = {value} does not "
                                  f"fit ({limit} {what})")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
    for name, shape in shapes.items():
        if name in expected and expected[name] != shape:
            raise CheckpointError(f"{weights}: weights do not match config.json: {name} is {list(shape)}, "
                                  f"the config makes it {list(expected[name])}")


@contextlib.contextmanager
def _write_errors_as_os_errors(directory: Path, name: str) -> Iterator[None]:
    """safetensors and ``torch.save`` report a failed write (a full disk, above all) as their own
    errors (``SafetensorError``, ``RuntimeError: ... unexpected pos``); callers handle OS errors,
    so they become one, ``ENOSPC`` when the disk is indeed full."""
    try:
        yield
    except (SafetensorError, RuntimeError) as exc:
        try:
            full = shutil.disk_usage(directory).free < (1 << 20)
        except OSError:
            full = False
        reason = "no space left on device" if full else f"write failed: {str(exc).splitlines()[0][:200]}"
        raise OSError(errno.ENOSPC if full else errno.EIO, f"{name}: {reason}") from None


def load_weights_into(model: nn.Module, directory: Path) -> None:
    """Load ``directory``'s safetensors weights into ``model``; a missing, truncated or
    mismatched file is a ``CheckpointError`` naming it."""
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    try:
        load_model(model, str(weights), strict=True)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({exc})") from None
    except RuntimeError as exc:
        raise CheckpointError(f"{weights}: weights do not match config.json: {exc}") from None


def read_example(directory: str | os.PathLike[str]) -> Example | None:
    """The checkpoint's example prompt and settings (``lm.example``); None if it has none."""
    _, meta = read_config(Path(directory))
    if "example" not in meta:
        return None
    try:
        return Example.from_dict(meta["example"])
    except ExampleError as exc:
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: {exc}") from None


def read_chat_template(directory: str | os.PathLike[str]) -> ChatTemplate | None:
    """The checkpoint's chat template, checked (``lm.chat_template.read``); None: the default."""
    _, meta = read_config(Path(directory))
    try:
        return read_template(Path(directory), meta.get("chat_template"), CONFIG_FILE)
    except ChatTemplateError as exc:
        raise CheckpointError(str(exc)) from None


def read_context(directory: str | os.PathLike[str], tokenizer: Tokenizer | None = None) -> TextContext:
    """The checkpoint's ``TextContext`` (see ``lm.context``), validated against its tokenizer
    and model. A checkpoint from before the record existed gets the trainer's rule, applied to
    its tokenizer and recorded ``seq_len``, and the log says so."""
    directory = resolve_checkpoint_dir(directory)
    config, meta = read_config(directory)
    if tokenizer is None:
        try:
            tokenizer = load_tokenizer(directory)
        except TokenizerError as exc:
            raise CheckpointError(f"{directory}: tokenizer: {exc}") from None
    if "context" in meta:
        try:
            return TextContext.from_dict(meta["context"], vocab_size=tokenizer.vocab_size,
                                         block_size=config.max_context)
        except ContextError as exc:
            raise CheckpointError(f"{directory / CONFIG_FILE}: {exc}") from None
    run = (meta.get("training") or {}).get("run") or {}
    seq_len = (run.get("train") or {}).get("seq_len")
    seq_len = seq_len if isinstance(seq_len, int) and not isinstance(seq_len, bool) and seq_len >= 1 else None
    context = TextContext.derive(tokenizer, trained_length(config.max_context, seq_len))
    log.warning("%s predates the context record; texts start after %r (the tokenizer's line break), "
                "context length %s", directory, tokenizer.decode(list(context.start)), context.max_length)
    return context


def load_trainer_state(directory: Path) -> dict[str, Any]:
    path = directory / TRAINER_STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (this checkpoint cannot be resumed)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or hostile files
        raise CheckpointError(f"{path}: cannot be loaded safely ({exc})") from None
