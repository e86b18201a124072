"""Fine-tuning: a new run that starts from a checkpoint's weights and tokenizer (``train.init_from``).

Unlike ``--resume``, which continues one run exactly (optimizer, schedule, data position), a
fine-tuning run is a run of its own on new data: a fresh optimizer and schedule, its own run
directory, the checkpoint's architecture and tokenizer. So the ``[model]`` and ``[tokenizer]``
tables come from the checkpoint; a value the config gives that disagrees with it is an error
naming the key -- except the dropouts, which shape training, not the weights, and may be set
for the new data. Text the tokenizer never saw still trains (byte fallback, or ``<unk>``), and
the run says how much of the new corpus fell back.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
from torch import nn

from lm.chat_template import ChatTemplate
from lm.checkpoint import (
    LATEST_FILE,
    latest_checkpoint,
    load_weights_into,
    read_chat_template,
    read_config,
    resolve_checkpoint_dir,
)
from lm.config import ConfigError, RunConfig, TokenizerConfig, to_dict
from tokenizer import Tokenizer

log = logging.getLogger(__name__)

FREE_MODEL_KEYS = ("dropout", "emb_dropout", "locked_dropout", "weight_drop", "word_dropout")
"""``[model]`` keys a fine-tuning run may change: they regularise training and are not weights."""


def resolve(run: RunConfig) -> tuple[RunConfig, Path]:
    """``run`` with the model and tokenizer tables of its ``train.init_from`` checkpoint (a
    checkpoint directory, or a run directory: its best), and that checkpoint's directory."""
    source = resolve_checkpoint_dir(run.train.init_from)
    config, meta = read_config(source)
    saved = {k: v for k, v in to_dict(config).items() if k != "vocab_size"}
    for key, value in run.model.items():
        if key not in FREE_MODEL_KEYS and saved.get(key) != value:
            held = f"{saved[key]!r}" if key in saved else "no such key"
            raise ConfigError(f"model.{key} = {value!r} conflicts with the checkpoint {source} ({held}): a "
                              f"fine-tuned model keeps its architecture; remove model.{key} from the config "
                              f"(only {', '.join('model.' + k for k in FREE_MODEL_KEYS)} may change)")
        if key in FREE_MODEL_KEYS and key not in saved:
            raise ConfigError(f"model.{key}: the checkpoint's {saved.get('family')} model has no such key")
    kind = meta["tokenizer"]["kind"]
    default, given = TokenizerConfig(), run.tokenizer
    for name in (f.name for f in dataclasses.fields(TokenizerConfig)):
        value = getattr(given, name)
        agrees = (name == "kind" and value == kind) or (name == "vocab_size" and value == config.vocab_size)
        if value != getattr(default, name) and not agrees:
            raise ConfigError(f"tokenizer.{name} = {value!r}: a fine-tuning run uses the checkpoint's tokenizer "
                              f"({kind}, {config.vocab_size} ids, from {source}); remove tokenizer.{name}")
    model = {**saved, **{k: v for k, v in run.model.items() if k in FREE_MODEL_KEYS}}
    tokenizer = dataclasses.replace(default, kind=kind, path=str(source))
    return dataclasses.replace(run, model=model, tokenizer=tokenizer), source


def start(model: nn.Module, source: Path) -> None:
    """Load the checkpoint's weights into the freshly built ``model`` (before it is sharded or
    wrapped); a checkpoint whose weights do not fit is a ``CheckpointError`` naming the file."""
    load_weights_into(model, source)
    log.info("fine-tuning from %s", source)


def chat_template(source: Path | None, resumed: Path | None) -> ChatTemplate | None:
    """The chat template a run's checkpoints carry: the fine-tuned checkpoint's (``source``),
    or on ``--resume`` the one its last checkpoint carries (``resumed``: the run directory)."""
    if source is not None:
        return read_chat_template(source)
    if resumed is not None and (resumed / LATEST_FILE).is_file():
        return read_chat_template(latest_checkpoint(resumed))
    return None


def fallback_fraction(tokens: np.ndarray, fallback: tuple[int, ...]) -> float:
    """The share of ``tokens`` that are ``fallback`` ids (``Tokenizer.fallback_ids``: byte
    tokens, or ``<unk>``): how much of a new corpus the checkpoint's vocabulary did not cover."""
    if not len(tokens):
        return 0.0
    return float(np.isin(tokens, np.asarray(fallback, dtype=np.int64)).mean())


def report_fallback(tokenizer: Tokenizer, tokens: np.ndarray) -> float:
    fallback = tokenizer.fallback_ids()
    share = fallback_fraction(tokens, fallback)
    how = "byte tokens" if len(fallback) > 1 else "<unk>"
    log.info("fine-tuning: %.2f%% of the new corpus's training tokens are %s (text the checkpoint's "
             "tokenizer has no piece for)", 100 * share, how)
    return share
