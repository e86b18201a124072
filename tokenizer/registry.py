"""The two entry points the CLI and the checkpoint loader use: train a tokenizer of a named
kind, and load whichever kind a directory holds."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

from tokenizer import meta
from tokenizer.base import Tokenizer
from tokenizer.char import CharTokenizer
from tokenizer.errors import TokenizerError
from tokenizer.io import PathLike
from tokenizer.kinds import IMPORTED_KIND, KINDS, SENTENCEPIECE_KINDS
from tokenizer.sentencepiece_tok import SentencePieceTokenizer
from tokenizer.word import WordTokenizer


def _trainer(kind: str) -> Callable[..., Tokenizer]:
    """The ``train`` classmethod for ``kind``, as ``f(inputs, vocab_size, **options)``."""
    if kind == "char":
        return CharTokenizer.train
    if kind == "word":
        return WordTokenizer.train
    if kind in SENTENCEPIECE_KINDS:
        return functools.partial(SentencePieceTokenizer.train, kind)
    raise TokenizerError(f"unknown tokenizer kind {kind!r} (choose from {', '.join(KINDS)})")


def train_options(kind: str) -> dict[str, Any]:
    """The options ``train_tokenizer`` accepts for ``kind``, with their defaults (for help
    text and for validating configs before a long run)."""
    parameters = inspect.signature(_trainer(kind)).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def train_tokenizer(
    kind: str,
    inputs: Sequence[PathLike] | PathLike,
    vocab_size: int | None = None,
    **options: Any,
) -> Tokenizer:
    """Train a tokenizer of ``kind`` (``char``, ``word``, ``bpe`` or ``unigram``) on UTF-8 files.

    ``vocab_size`` is the total number of ids, specials included. For ``char`` and ``word`` it
    is a cap (``None`` or 0: everything the corpus gives); ``bpe`` and ``unigram`` need it and
    produce exactly that many. ``options`` are the kind's own settings (see ``train_options``):
    ``char``: ``unk_policy``; ``word``: ``min_freq``, ``max_size``, ``lowercase``,
    ``split_regex``, ``eos_at_newline``; ``bpe``/``unigram``: ``character_coverage``,
    ``model_type``, ``split_digits``, ``input_sentence_size``, ``shuffle_input_sentence``,
    ``max_sentence_length``, ``num_threads``, ``seed``; every kind: ``chunk_bytes``. An option
    given as ``None`` takes its default, so a CLI can pass unset flags straight through.

    Inputs are streamed, never read whole. Every user error -- unknown kind or option, missing,
    empty or non-UTF-8 file, unreachable vocabulary size -- is a ``TokenizerError`` whose
    message names the problem.
    """
    train = _trainer(kind)
    accepted = train_options(kind)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TokenizerError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for a {kind} tokenizer (accepted: {', '.join(accepted)})"
        )
    if vocab_size is not None and (
        isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 0
    ):
        raise TokenizerError(f"vocab_size must be a non-negative integer, got {vocab_size!r}")
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    given = {name: value for name, value in options.items() if value is not None}
    return train(list(inputs), vocab_size, **given)


def load_tokenizer(directory: PathLike) -> Tokenizer:
    """Load the tokenizer saved in ``directory``, whatever its kind (read from
    ``tokenizer.json``). Missing, incomplete or corrupt files raise ``TokenizerError``."""
    kind = meta.read(directory)["kind"]
    if kind == "char":
        return CharTokenizer.load(directory)
    if kind == "word":
        return WordTokenizer.load(directory)
    if kind in SENTENCEPIECE_KINDS:
        return SentencePieceTokenizer.load(directory)
    if kind == IMPORTED_KIND:
        from tokenizer.hf import HFTokenizer

        return HFTokenizer.load(directory)
    raise TokenizerError(
        f"{meta.path_in(directory)}: unknown tokenizer kind {kind!r} (known: {', '.join(KINDS)})"
    )
