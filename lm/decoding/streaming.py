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

import sys
from collections.abc import Sequence
from typing import Any, Protocol

REPLACEMENT = "\ufffd"
BYTES_PREFIX = "bytes:"
"""How a token that is part of a character reads among alternatives (OpenAI's convention)."""
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


def token_pieces(tokenizer: Decoder, context_ids: Sequence[int], ids: Sequence[int], text: str | None = None) -> list[str]:
    """The text of each of ``ids`` as it reads after ``context_ids``, cut to ``text``.

    Decoding a token alone drops the spaces that word and sentencepiece tokenizers put between
    tokens, and shows half a UTF-8 character as U+FFFD. Here each token's piece is what it adds
    to the text decoded so far (a token that only starts a character adds "", the one that
    completes it adds the character), and pieces past the end of ``text`` -- the ``<eos>`` or
    stop string that ended a completion, which ``text`` leaves out -- are cut. So
    ``"".join(pieces) == text`` and piece ``i`` starts at ``len("".join(pieces[:i]))``: OpenAI's
    ``tokens`` and ``text_offset`` for every tokenizer kind. Without ``text``, nothing is cut.
    """
    aligner = PieceAligner(tokenizer, context_ids)
    out = [piece for token in ids for piece, _ in aligner.push(token, 0.0, 0)]
    out += [piece for piece, _ in aligner.finish(sys.maxsize if text is None else len(text))]
    return out


def candidate_pieces(tokenizer: Decoder, before: Sequence[int], token_ids: Sequence[int]) -> list[str]:
    """The text each of ``token_ids`` would add after ``before`` (decoded in the window of its
    last few tokens, as ``TextStream`` decodes, the window's own text decoded once): the
    alternatives' texts in ``top_logprobs``. A token that only starts a character has no text of
    its own: it reads as its bytes, OpenAI's way (``bytes:\\xe2``), so two such stay apart."""
    window = list(before[-PROMPT_CONTEXT:]) if PROMPT_CONTEXT else []
    base = tokenizer.decode(window).rstrip(REPLACEMENT)  # a character it may complete is its own
    out = []
    for token_id in token_ids:
        text = tokenizer.decode([*window, token_id])
        piece = text[len(base):] if text.startswith(base) else tokenizer.decode([token_id])
        if (not piece or piece.endswith(REPLACEMENT)) and hasattr(tokenizer, "token_bytes"):
            raw = tokenizer.token_bytes(token_id)
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:  # part of a character
                piece = BYTES_PREFIX + "".join(f"\\x{b:02x}" for b in raw)
        out.append(piece)
    return out


def piece_bytes(piece: str) -> bytes:
    """The bytes a ``top_logprobs`` text stands for (``bytes:\\xe2`` is one byte)."""
    if piece.startswith(BYTES_PREFIX):
        try:
            return bytes.fromhex(piece[len(BYTES_PREFIX):].replace("\\x", ""))
        except ValueError:
            pass
    return piece.encode("utf-8")


class PieceAligner:
    """``token_pieces`` step by step, for a stream: each token's piece is released once the text
    released to the client covers it, so streamed pieces equal the non-streamed ones. Each
    token carries a ``payload`` (its log-probability, alternatives...) out with its piece.

    The newest token is held while its piece is empty: it may have started a character that the
    text ends in the middle of, whose U+FFFD ``finish`` then gives it (released, it would leave
    that text to no token)."""

    def __init__(self, tokenizer: Decoder, context_ids: Sequence[int] = ()) -> None:
        self._stream = TextStream(tokenizer, context_ids)
        self._pending: list[list] = []  # [piece, payload]
        self._end = 0  # characters of text in pieces so far
        self._released = 0  # characters of text already handed out in released pieces

    def push(self, token_id: int, payload: Any, released: int) -> list[tuple[str, Any]]:
        """Add a token (``released``: characters of the completion the client has so far);
        return the ``(piece, payload)`` of each token now covered by released text."""
        piece = self._stream.push(token_id)
        self._pending.append([piece, payload])
        self._end += len(piece)
        return self._flush(released, final=False)

    def finish(self, length: int) -> list[tuple[str, Any]]:
        """The rest, cut to a completion of ``length`` characters."""
        tail = self._stream.finish()
        if self._pending:
            self._pending[-1][0] += tail
        return self._flush(length, final=True)

    def _flush(self, limit: int, *, final: bool) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        while self._pending:
            piece, payload = self._pending[0]
            if not final and (self._released + len(piece) > limit or (not piece and len(self._pending) == 1)):
                break
            keep = piece[: max(0, limit - self._released)]
            self._released += len(keep)
            out.append((keep, payload))
            self._pending.pop(0)
        return out
