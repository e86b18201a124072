"""Incremental detokenization: token ids in, UTF-8-safe text deltas and stop strings out.

Decoding one token at a time goes wrong in two ways: a byte-fallback character spread over
several tokens decodes to U+FFFD until its last byte arrives, and tokenizers that join pieces
(word: spaces between words; sentencepiece: a leading space dropped at the start) decode a
token differently alone than after its neighbours. So, as vLLM's detokenizer does, each token
is decoded inside a small window of the tokens before it and the delta is the window's text
beyond what the window already produced; a delta ending in U+FFFD is held back until the
character completes. The window starts with the last few prompt tokens, so the first generated
token gets the spacing it has after the prompt.

Stop strings are matched on the text (so one may span tokens); text that could still turn out
to be the start of a stop string is held back, so a stop string never reaches the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT = "\ufffd"
PROMPT_CONTEXT = 4
"""Prompt tokens decoded ahead of the completion (enough for any tokenizer's spacing rules)."""


class Decoder(Protocol):
    def decode(self, ids: Sequence[int]) -> str: ...


class TextStream:
    """Turns generated token ids into text deltas; ``text`` is the completion so far.

    ``push`` returns the delta that is safe to show; ``finish`` returns whatever was held back.
    The deltas concatenate to exactly ``text``. After a stop string is seen, ``stopped`` is True
    and ``text`` ends just before it.
    """

    __slots__ = ("_tok", "_ids", "_prefix", "_read", "_stop", "_hold", "text", "_emitted", "stopped")

    def __init__(self, tokenizer: Decoder, prompt_ids: Sequence[int] = (), stop: Sequence[str] = ()) -> None:
        self._tok = tokenizer
        tail = list(prompt_ids[-PROMPT_CONTEXT:]) if PROMPT_CONTEXT else []
        if tail and tokenizer.decode(tail).endswith(REPLACEMENT):
            tail = []  # a prompt ending mid-character cannot serve as context
        self._ids = tail
        self._prefix = 0
        self._read = len(tail)
        self._stop = tuple(stop)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self.text = ""
        self._emitted = 0
        self.stopped = False

    def copy(self) -> TextStream:
        """An independent copy (beam search forks hypotheses)."""
        new = TextStream.__new__(TextStream)
        for name in TextStream.__slots__:
            setattr(new, name, getattr(self, name))
        new._ids = list(self._ids)
        return new

    def push(self, token_id: int) -> str:
        """Add one token; return the new text that is safe to show (possibly "")."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        chunk = self._decode_new(final=False)
        return self._accept(chunk, final=False) if chunk else ""

    def finish(self) -> str:
        """Flush held-back text (an incomplete character becomes U+FFFD, as ``decode`` does)."""
        if self.stopped:
            return ""
        return self._accept(self._decode_new(final=True), final=True)

    def _decode_new(self, *, final: bool) -> str:
        ids = self._ids
        prefix_text = self._tok.decode(ids[self._prefix : self._read])
        new_text = self._tok.decode(ids[self._prefix :])
        if len(new_text) <= len(prefix_text) or (not final and new_text.endswith(REPLACEMENT)):
            return ""
        # Advance the window: the tokens just decoded become the next token's left context.
        self._ids = ids[self._read :]
        self._prefix, self._read = 0, len(self._ids)
        return new_text[len(prefix_text) :]

    def _accept(self, chunk: str, *, final: bool) -> str:
        start = max(0, len(self.text) - self._hold)
        self.text += chunk
        if self._stop:
            hits = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                final = True
        end = len(self.text) if final else len(self.text) - self._held_back()
        delta = self.text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return delta

    def _held_back(self) -> int:
        """Length of the longest suffix of ``text`` that begins some stop string."""
        text = self.text
        for k in range(min(self._hold, len(text)), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self._stop):
                return k
        return 0
