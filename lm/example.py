"""A checkpoint's example: a prompt from the model's own held-out text and the decoding settings
that show the model at its best -- what the playground opens with, so a newcomer's first click
reads like the corpus instead of greedy decoding's loops.

The trainer derives it from the validation split (``derive``); it is stored in the checkpoint's
``config.json`` under ``example`` and is optional (older checkpoints have none). The settings
are ``GenerationParams`` fields, kept here as plain JSON values (this module sits beside the
checkpoint, below decoding) and checked as parameters by ``lm.pipeline`` when a checkpoint is
loaded.

Why sampling: small language models decoded greedily fall into loops within a few lines (the
most likely continuation of a loop is the loop); sampling at temperature 0.8 with nucleus 0.95
keeps to the model's distribution minus its noisy tail, which is what its perplexity measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenizer import Tokenizer

PROMPT_WORDS = 6
"""At most this many words of the held-out line make the example prompt."""
HELD_OUT_TOKENS = 4096
"""How much of the validation stream ``from_stream`` reads for a prompt."""
NEW_TOKENS = {"char": 400, "bpe": 150, "unigram": 150, "word": 80}
"""Tokens to generate, by tokenizer kind: a few lines of text for each."""
SAMPLING: dict[str, Any] = {"strategy": "sample", "temperature": 0.8, "top_p": 0.95}


class ExampleError(ValueError):
    """A stored example that is not a prompt with valid decoding settings."""


@dataclass(frozen=True)
class Example:
    prompt: str
    params: dict[str, Any] = field(default_factory=dict)
    """Non-default ``GenerationParams`` fields (JSON values: ``stop`` is a list)."""

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: object) -> Example:
        """The example a ``config.json`` holds; a wrong shape is an ``ExampleError``."""
        params = data.get("params", {}) if isinstance(data, dict) else None
        if (not isinstance(data, dict) or set(data) - {"prompt", "params"} or not isinstance(data.get("prompt"), str)
                or not isinstance(params, dict)):
            raise ExampleError(f'example must be {{"prompt": str, "params": {{...}}}}, got {data!r}')
        return cls(data["prompt"], dict(params))


def prompt_from(text: str, avoid: tuple[str, ...] = ("<unk>",)) -> str:
    """The first complete non-blank line of ``text`` (a token stream decoded from its start:
    the text-start line break, or mid-line), cut to its first ``PROMPT_WORDS`` words, skipping
    lines whose prompt would hold an ``avoid`` word; a line kept whole keeps its line break, so
    the model starts on the next line (a speaker's name, then the speech)."""
    lines = text.split("\n")
    complete = lines[1:-1] if len(lines) > 2 else lines[:1]  # the first and last may be cut
    for line in complete:
        words = line.split()[: PROMPT_WORDS + 1]
        if not words or any(w in avoid for w in words[:PROMPT_WORDS]):
            continue
        if len(words) <= PROMPT_WORDS:
            return line.strip() + "\n"
        return " ".join(words[:PROMPT_WORDS])
    return ""


def derive(tokenizer: Tokenizer, held_out: str) -> Example:
    """The example for a model trained with ``tokenizer``, prompted from ``held_out`` text.

    A word tokenizer with ``<eos>`` at line ends would stop at the end of the first sentence:
    its example keeps going (``stop_at_eos`` false), a few sentences, one per line. A word
    model's ``<unk>`` stands for every rare word at once, so it is its most likely token in many
    places and reads as noise: the example suppresses it.
    """
    params: dict[str, Any] = {**SAMPLING, "max_new_tokens": NEW_TOKENS.get(tokenizer.kind, 150)}
    if getattr(tokenizer, "eos_at_newline", False):
        params["stop_at_eos"] = False
    if tokenizer.kind == "word":
        params["suppress_tokens"] = [tokenizer.unk_id]
    return Example(prompt_from(held_out), params)


def from_stream(tokenizer: Tokenizer, tokens: Sequence[int]) -> Example:
    """``derive`` from the start of a held-out token stream (the trainer's validation split)."""
    return derive(tokenizer, tokenizer.decode([int(t) for t in tokens[:HELD_OUT_TOKENS]]))
