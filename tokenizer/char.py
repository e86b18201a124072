"""Character tokenizer: one id per Unicode character seen in training.

Characters never seen in training are either spelled as their UTF-8 bytes with 256 byte tokens
(``unk_policy="byte_fallback"``, the default, so ``decode(encode(text)) == text`` for every
string) or mapped to ``<unk>`` (``unk_policy="unk"``).

Id layout: 0-3 the specials (``<pad>``, ``<unk>``, ``<bos>``, ``<eos>``); with byte fallback
4-259 the byte tokens ``<0x00>``..``<0xFF>``; then the characters, most frequent first (ties
by code point), so a capped vocabulary keeps the most useful ones and ids are deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Self

import numpy as np

from tokenizer import meta
from tokenizer.base import (
    SPECIAL_PIECES,
    UNK_ID,
    Tokenizer,
    check_ids,
)
from tokenizer.errors import TokenizerError
from tokenizer.io import DEFAULT_CHUNK_BYTES, PathLike, count_corpus

logger = logging.getLogger(__name__)

UNK_POLICIES = ("byte_fallback", "unk")
NUM_BYTES = 256
BYTE_OFFSET = len(SPECIAL_PIECES)
"""Id of the byte token ``<0x00>`` when byte fallback is on."""
_UNICODE_SIZE = 0x110000
_UNKNOWN = -1
"""Marker in the lookup table for characters that need byte fallback."""


class CharTokenizer(Tokenizer):
    """Characters to ids at C speed.

    Text made only of known characters -- the common case -- is encoded by ``map`` over a
    lookup (no Python-level loop). Text with unknown characters takes a numpy path that looks
    code points up in a dense table and spells the misses as UTF-8 byte tokens, vectorised, so
    even text full of unseen characters stays fast.
    """

    kind = "char"

    def __init__(self, chars: Sequence[str], unk_policy: str = "byte_fallback") -> None:
        if unk_policy not in UNK_POLICIES:
            raise TokenizerError(
                f"unk_policy must be one of {', '.join(UNK_POLICIES)}; got {unk_policy!r}"
            )
        chars = tuple(chars)
        for char in chars:
            if not isinstance(char, str) or len(char) != 1:
                raise TokenizerError(f"vocabulary entries must be single characters, got {char!r}")
            if 0xD800 <= ord(char) <= 0xDFFF:
                raise TokenizerError(f"vocabulary entry U+{ord(char):04X} is a lone surrogate")
        if len(set(chars)) != len(chars):
            duplicates = sorted({c for c in chars if chars.count(c) > 1})
            raise TokenizerError(f"vocabulary has duplicate characters: {duplicates!r}")
        self.chars = chars
        self.unk_policy = unk_policy
        self.byte_fallback = unk_policy == "byte_fallback"
        first = BYTE_OFFSET + (NUM_BYTES if self.byte_fallback else 0)
        self._vocab_size = first + len(chars)

        # Fast paths: a dict for any text, a 128-entry list for ASCII text (indexed by the
        # bytes themselves); both hand back shared int objects, so no per-token allocation.
        self._char_ids = {char: first + i for i, char in enumerate(chars)}
        self._ascii_ids = [self._char_ids.get(chr(b), _UNKNOWN) for b in range(128)]
        self._known_ascii = bytes(b for b in range(128) if chr(b) in self._char_ids)
        self._table: np.ndarray | None = None  # built on first text with unknown characters

        # Decoding joins bytes, not strings, so byte tokens and characters can sit side by side
        # and a byte sequence that is not UTF-8 becomes U+FFFD instead of an exception.
        pieces: list[bytes] = [b"", "\ufffd".encode(), b"", b""]
        if self.byte_fallback:
            pieces += [bytes([b]) for b in range(NUM_BYTES)]
        pieces += [char.encode("utf-8") for char in chars]
        self._pieces = pieces

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        if text.isascii():  # O(1) in CPython
            raw = text.encode("ascii")
            if not raw.translate(None, self._known_ascii):  # no unknown character left
                return list(map(self._ascii_ids.__getitem__, raw))
        else:
            try:
                return list(map(self._char_ids.__getitem__, text))
            except KeyError:
                pass
        return self._encode_with_unknown(text)

    def _encode_with_unknown(self, text: str) -> list[int]:
        """Vectorised slow path: look code points up in a dense table (one entry per Unicode
        code point, 4.4 MB), then apply the unknown-character policy to the misses."""
        if self._table is None:
            table = np.full(
                _UNICODE_SIZE, _UNKNOWN if self.byte_fallback else UNK_ID, dtype=np.int32
            )
            table[np.fromiter(map(ord, self.chars), dtype=np.int64, count=len(self.chars))] = (
                np.fromiter(self._char_ids.values(), dtype=np.int32, count=len(self.chars))
            )
            self._table = table
        raw = text.encode("utf-32-le", "surrogatepass")
        code_points = np.frombuffer(raw, dtype=np.uint32)
        ids = self._table[code_points]
        if self.byte_fallback:
            unknown = ids == _UNKNOWN
            if unknown.any():
                return _spell_unknown_as_bytes(code_points, ids, unknown).tolist()
        return ids.tolist()

    def decode(self, ids: Sequence[int]) -> str:
        check_ids(ids, self._vocab_size)
        pieces = self._pieces
        return b"".join([pieces[i] for i in ids]).decode("utf-8", "replace")

    def fallback_ids(self) -> tuple[int, ...]:
        if not self.byte_fallback:
            return (self.unk_id,)
        return (self.unk_id, *range(BYTE_OFFSET, BYTE_OFFSET + NUM_BYTES))

    def token_bytes(self, token_id: int) -> bytes:
        check_ids([token_id], self._vocab_size)
        return self._pieces[token_id]

    def save(self, directory: PathLike) -> None:
        meta.write(directory, self, unk_policy=self.unk_policy, chars=list(self.chars))

    @classmethod
    def load(cls, directory: PathLike) -> Self:
        saved, path = meta.read_of(directory, (cls.kind,))
        chars = meta.require(saved, "chars", list, path)
        unk_policy = meta.require(saved, "unk_policy", str, path)
        return meta.rebuild(
            saved, path, lambda: cls(chars, unk_policy), "the saved characters give {}"
        )

    @classmethod
    def train(
        cls,
        inputs: Sequence[PathLike],
        vocab_size: int | None = None,
        *,
        unk_policy: str = "byte_fallback",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> Self:
        """Build the vocabulary from the characters of ``inputs``, read in chunks.

        ``vocab_size`` is the total size including the specials and byte tokens; the most
        frequent characters that fit are kept. ``None`` or 0 keeps every character seen.
        """
        if unk_policy not in UNK_POLICIES:
            raise TokenizerError(
                f"unk_policy must be one of {', '.join(UNK_POLICIES)}; got {unk_policy!r}"
            )
        byte_fallback = unk_policy == "byte_fallback"
        reserved = BYTE_OFFSET + (NUM_BYTES if byte_fallback else 0)
        if vocab_size:
            minimum = reserved if byte_fallback else reserved + 1
            if vocab_size < minimum:
                need = (
                    f"the {BYTE_OFFSET} special and {NUM_BYTES} byte tokens need at least {minimum}"
                    if byte_fallback
                    else f"the {BYTE_OFFSET} special tokens and one character need at least {minimum}"
                )
                raise TokenizerError(
                    f"vocab_size {vocab_size} is too small for a char tokenizer with "
                    f"unk_policy={unk_policy!r}: {need}"
                )
        counts = count_corpus(inputs, "characters", chunk_bytes=chunk_bytes)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        keep = len(ranked) if not vocab_size else max(0, vocab_size - reserved)
        chars = [char for char, _ in ranked[:keep]]
        tokenizer = cls(chars, unk_policy)
        logger.info(
            "char tokenizer: %d distinct characters, kept %d, vocab_size %d",
            len(ranked),
            len(chars),
            tokenizer.vocab_size,
        )
        if vocab_size and tokenizer.vocab_size < vocab_size:
            logger.info("the corpus has fewer characters than vocab_size %d asks for", vocab_size)
        return tokenizer

    def __repr__(self) -> str:
        return (
            f"CharTokenizer(vocab_size={self.vocab_size}, chars={len(self.chars)}, "
            f"unk_policy={self.unk_policy!r})"
        )


def _spell_unknown_as_bytes(
    code_points: np.ndarray, ids: np.ndarray, unknown: np.ndarray
) -> np.ndarray:
    """Replace each unknown character's id by the ids of its UTF-8 bytes, in place of it.

    Every character takes ``lengths[i]`` output slots (1 if known, its UTF-8 length if not);
    the unknown characters' bytes, encoded in one call, fill their slots in order.
    """
    unknown_points = code_points[unknown].astype(np.uint32)
    utf8 = (
        unknown_points.tobytes()
        .decode("utf-32-le", "surrogatepass")
        .encode("utf-8", "surrogatepass")
    )
    lengths = np.ones(len(code_points), dtype=np.int64)
    lengths[unknown] = (
        1 + (unknown_points >= 0x80) + (unknown_points >= 0x800) + (unknown_points >= 0x10000)
    )
    byte_slot = np.repeat(unknown, lengths)  # (total slots,) True where a byte token goes
    out = np.empty(byte_slot.size, dtype=np.int64)
    out[~byte_slot] = ids[~unknown]
    out[byte_slot] = np.frombuffer(utf8, dtype=np.uint8).astype(np.int64) + BYTE_OFFSET
    return out
