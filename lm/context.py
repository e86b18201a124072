"""Where a text starts and how far back a model may look: the contract between training and use.

A model only knows the contexts it was trained on. Two facts about them travel with every
checkpoint (``config.json``'s ``"context"`` table) so that generation and scoring ask the model
nothing new:

- ``start``: the token ids that come before the first token of a text. The trainer's stream is
  the corpus as written, lines separated by the tokenizer's line break (``"\\n"`` for char and
  sentencepiece kinds, ``<eos>`` for a word tokenizer with ``eos_at_newline``), and every file of
  the corpus starts after one (``lm.training.data`` puts it there), so the line break is what a model has
  seen, thousands of times, in the role "a text begins here". Generation conditions a prompt on
  it and scoring scores a text's first token after it. A prompt or text that already begins with
  it is not given a second one. A tokenizer with no line-break token (a word tokenizer without
  ``eos_at_newline``) has no start: a text's first token is then context, not scored, and an
  empty prompt is refused.
- ``max_length``: the longest context the model was trained to attend to -- a Transformer's
  training ``seq_len`` (at most its ``block_size``), ``None`` for recurrent models, whose carried
  state is how they were trained. Decoding slides its window and scoring sizes its windows by it.

Checkpoints written before this record existed are read with the same rule the trainer applies
(the tokenizer's line break; ``seq_len`` from the recorded run config, else ``block_size``), and
the loader says so in its log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LINE_BREAK = "\n"


class ContextError(ValueError):
    """A checkpoint's ``context`` record is malformed or does not fit its tokenizer/model."""


@dataclass(frozen=True)
class TextContext:
    """What precedes a text (``start`` ids) and the longest context (``max_length``) to use."""

    start: tuple[int, ...]
    max_length: int | None

    @classmethod
    def derive(cls, tokenizer: Any, max_length: int | None) -> TextContext:
        """The trainer's rule: a text starts after the tokenizer's line break, if it has one."""
        return cls(line_break_ids(tokenizer), max_length)

    def frame(self, ids: Sequence[int]) -> tuple[list[int], int]:
        """``(context, n)``: ``ids`` as the model reads them -- after ``start`` unless they
        already begin with it -- and how many leading ids of ``context`` are that start (and so
        neither generated, penalised nor scored)."""
        ids = list(ids)
        n = len(self.start)
        if n and ids[:n] == list(self.start):
            return ids, n
        return list(self.start) + ids, n

    def to_dict(self, tokenizer: Any) -> dict[str, Any]:
        return {"start_ids": list(self.start), "start_text": tokenizer.decode(list(self.start)),
                "max_length": self.max_length}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, vocab_size: int, block_size: int | None) -> TextContext:
        """Validate a ``context`` record against the tokenizer's vocabulary and the model."""
        if not isinstance(data, Mapping):
            raise ContextError(f"context must be an object, got {data!r}")
        unknown = sorted(set(data) - {"start_ids", "start_text", "max_length"})
        if unknown:
            raise ContextError(f"context has unknown field(s) {', '.join(unknown)}")
        start = data.get("start_ids")
        if not isinstance(start, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size for i in start):
            raise ContextError(f"context.start_ids must be a list of token ids in [0, {vocab_size}), got {start!r}")
        length = data.get("max_length")
        if block_size is None:
            if length is not None:
                raise ContextError(f"context.max_length must be null for a recurrent model, got {length!r}")
        elif isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= block_size:
            raise ContextError(f"context.max_length must be an integer in [1, {block_size}] (block_size), "
                               f"got {length!r}")
        return cls(tuple(start), length)


def line_break_ids(tokenizer: Any) -> tuple[int, ...]:
    """The ids a tokenizer writes for a line break in running text, or ``()`` if it has none
    (it drops line breaks, or would only spell one with ``<unk>``)."""
    ids = tokenizer.encode(LINE_BREAK)
    if not ids or tokenizer.unk_id in ids or tokenizer.decode(ids) != LINE_BREAK:
        return ()
    return tuple(ids)


def trained_length(block_size: int | None, seq_len: int | None) -> int | None:
    """The context a model was trained to attend to: ``seq_len`` capped by ``block_size``."""
    if block_size is None:
        return None
    return block_size if seq_len is None else min(block_size, seq_len)
