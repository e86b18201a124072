"""The ``Tokenizer`` interface every kind implements and the special-token id layout.

All kinds share one id layout for the special tokens (``<pad>`` = 0, ``<unk>`` = 1,
``<bos>`` = 2, ``<eos>`` = 3) so that models, data pipelines and decoders never need to ask
which kind of tokenizer they were given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import ClassVar

from tokenizer.errors import TokenizerError
from tokenizer.io import DEFAULT_CHUNK_BYTES, PathLike, iter_text_chunks

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_PIECES: tuple[str, ...] = ("<pad>", "<unk>", "<bos>", "<eos>")
"""Special token strings, indexed by id."""


class Tokenizer(ABC):
    """Text <-> token ids. Subclasses set ``kind`` and implement the abstract methods.

    ``encode`` adds no ``<bos>``/``<eos>`` of its own: framing a sequence is the caller's job
    (the data pipeline and the decoders know whether they want it). ``decode`` drops
    ``<pad>``/``<bos>`` and ``<eos>`` (except a word tokenizer's ``<eos>`` that stands for a line
    end, which becomes ``"\\n"``); ``<unk>`` decodes to U+FFFD (char), ``"<unk>"`` (word) or
    sentencepiece's ``" ⁇ "`` -- with byte fallback, char, bpe and unigram never produce it.
    """

    kind: str
    pad_id: ClassVar[int] = PAD_ID
    unk_id: ClassVar[int] = UNK_ID
    bos_id: ClassVar[int] = BOS_ID
    eos_id: ClassVar[int] = EOS_ID

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, specials included; every id ``encode`` returns is below it."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids for ``text``."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text for ``ids``; raises ``TokenizerError`` for an id outside the vocabulary."""

    def token_text(self, token_id: int) -> str:
        """A token's name in the vocabulary: a special's (``<eos>``), else its text."""
        return SPECIAL_PIECES[token_id] if token_id < len(SPECIAL_PIECES) else self.decode([token_id])

    def fallback_ids(self) -> tuple[int, ...]:
        """The ids that spell what the vocabulary has no piece for (``<unk>``; the byte tokens
        where there is byte fallback): how much of a text fell back is the share of these."""
        return (self.unk_id,)

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes token ``token_id`` stands for (a byte token's one byte, which alone
        is no text); by default its decoded text's."""
        return self.decode([token_id]).encode("utf-8")

    @abstractmethod
    def save(self, directory: PathLike) -> None:
        """Write the tokenizer's files (always including ``tokenizer.json``) into ``directory``."""

    @classmethod
    @abstractmethod
    def load(cls, directory: PathLike) -> Tokenizer:
        """Read a tokenizer of this kind back from ``directory`` (another kind is an error).
        ``tokenizer.load_tokenizer`` loads whatever kind a directory holds."""

    def encode_file(
        self, path: PathLike, chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> Iterator[list[int]]:
        """Token ids of a UTF-8 file, one list per chunk of about ``chunk_bytes`` bytes.

        Chunks end at newlines (see ``iter_text_chunks``), where no token of any kind spans,
        so the concatenated lists equal ``encode`` of the whole file while memory stays bounded
        for corpora larger than RAM.
        """
        for chunk in iter_text_chunks(path, chunk_bytes):
            yield self.encode(chunk)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"


def check_ids(ids: Sequence[int], vocab_size: int) -> None:
    """Raise ``TokenizerError`` if any id is outside ``[0, vocab_size)``.

    Python lists accept negative indices silently, so decoders check before looking ids up.
    """
    if len(ids) == 0:
        return
    low, high = min(ids), max(ids)
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise TokenizerError(
            f"token id {int(bad)} is out of range for vocabulary size {vocab_size}"
        )
