"""Word tokenizer: whitespace (or regex) split, a frequency-ranked vocabulary, ``<unk>`` for
the rest, and optionally ``<eos>`` at every line end.

Id layout: 0-3 the specials (``<pad>``, ``<unk>``, ``<bos>``, ``<eos>``), then the words by
frequency, most frequent first, ties in code-point order, so training is deterministic and
independent of how the corpus was chunked.

The four special strings are reserved: a literal ``<unk>`` in the text (the Penn Treebank
writes rare words that way) is the tokenizer's own ``<unk>`` id, never a separate word, and
likewise for the others. So the vocabulary trained on ``ptb.train.txt`` with ``eos_at_newline``
has the benchmark's 10,000 entries -- 9,999 word types, the corpus's ``<unk>`` among them, plus
``<eos>`` -- with ``<pad>`` and ``<bos>`` on top: ``vocab_size == 10_002``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Self

from tokenizer import meta
from tokenizer.base import (
    EOS_ID,
    SPECIAL_PIECES,
    UNK_ID,
    Tokenizer,
    check_ids,
)
from tokenizer.errors import TokenizerError
from tokenizer.io import DEFAULT_CHUNK_BYTES, PathLike, count_corpus

logger = logging.getLogger(__name__)

EOS_PIECE = SPECIAL_PIECES[EOS_ID]
_SETTING_TYPES: dict[str, type | tuple[type, ...]] = {
    "lowercase": bool,
    "split_regex": (str, type(None)),
    "eos_at_newline": bool,
}
"""The saved settings of a word tokenizer and the types ``tokenizer.json`` must hold them in."""


def _compile(split_regex: str | None) -> re.Pattern[str] | None:
    """Compile the word pattern, rejecting ones that would yield empty words."""
    if split_regex is None:
        return None
    try:
        pattern = re.compile(split_regex)
    except re.error as exc:
        raise TokenizerError(f"split_regex {split_regex!r} is not a valid regex: {exc}") from None
    if pattern.fullmatch("") is not None:
        raise TokenizerError(f"split_regex {split_regex!r} matches the empty string")
    return pattern


def _splitter(
    lowercase: bool, pattern: re.Pattern[str] | None, eos_at_newline: bool
) -> Callable[[str], list[str]]:
    """Text -> word strings (``<eos>`` for line ends); shared by training and encoding so the
    two can never split differently."""
    if pattern is None:
        # str.split() is one C call; turning "\n" into a word first keeps it that way.
        def split(text: str) -> list[str]:
            if lowercase:
                text = text.lower()
            if eos_at_newline and "\n" in text:
                text = text.replace("\n", f" {EOS_PIECE} ")
            return text.split()

        return split

    findall = pattern.findall

    def split_regex(text: str) -> list[str]:
        if lowercase:
            text = text.lower()
        if not eos_at_newline:
            return findall(text)
        words: list[str] = []
        lines = text.split("\n")
        for line in lines[:-1]:
            words += findall(line)
            words.append(EOS_PIECE)
        words += findall(lines[-1])
        return words

    return split_regex


class WordTokenizer(Tokenizer):
    """Words to ids with one dict lookup each.

    ``split_regex``, when given, is a pattern whose matches are the words (``re.findall``), e.g.
    ``r"\\w+|[^\\w\\s]"`` to split off punctuation; otherwise words are ``str.split()``'s
    whitespace-separated runs. ``decode`` joins words with single spaces and turns ``<eos>``
    back into a newline (when ``eos_at_newline``); ``<unk>`` decodes to ``"<unk>"``.
    """

    kind = "word"

    def __init__(
        self,
        words: Sequence[str],
        *,
        lowercase: bool = False,
        split_regex: str | None = None,
        eos_at_newline: bool = True,
    ) -> None:
        words = list(words)
        reserved = set(SPECIAL_PIECES)
        for word in words:
            if not isinstance(word, str) or not word:
                raise TokenizerError(f"vocabulary entries must be non-empty strings, got {word!r}")
            if word in reserved:
                raise TokenizerError(f"vocabulary entry {word!r} is a reserved special token")
        if len(set(words)) != len(words):
            counts = Counter(words)
            duplicates = sorted(w for w, n in counts.items() if n > 1)[:5]
            raise TokenizerError(f"vocabulary has duplicate words: {duplicates!r}")
        self.words = tuple(words)
        self.lowercase = lowercase
        self.split_regex = split_regex
        self.eos_at_newline = eos_at_newline
        self._split = _splitter(lowercase, _compile(split_regex), eos_at_newline)
        self._ids = {piece: i for i, piece in enumerate((*SPECIAL_PIECES, *words))}
        surface = ["", SPECIAL_PIECES[UNK_ID], "", "\n" if eos_at_newline else ""]
        self._surface = surface + words

    @property
    def vocab_size(self) -> int:
        return len(self._surface)

    def encode(self, text: str) -> list[int]:
        get = self._ids.get
        return [get(word, UNK_ID) for word in self._split(text)]

    def decode(self, ids: Sequence[int]) -> str:
        check_ids(ids, self.vocab_size)
        surface = self._surface
        text = " ".join([word for word in (surface[i] for i in ids) if word])
        if self.eos_at_newline:
            text = text.replace(" \n", "\n").replace("\n ", "\n")
        return text

    @property
    def settings(self) -> dict[str, bool | str | None]:
        """The constructor's keyword arguments besides the words, as saved."""
        return {key: getattr(self, key) for key in _SETTING_TYPES}

    def save(self, directory: PathLike) -> None:
        meta.write(directory, self, words=list(self.words), **self.settings)

    @classmethod
    def load(cls, directory: PathLike) -> Self:
        saved, path = meta.read_of(directory, (cls.kind,))
        words = meta.require(saved, "words", list, path)
        flags = {key: meta.require(saved, key, kind, path) for key, kind in _SETTING_TYPES.items()}
        return meta.rebuild(saved, path, lambda: cls(words, **flags), "the saved words give {}")

    @classmethod
    def train(
        cls,
        inputs: Sequence[PathLike],
        vocab_size: int | None = None,
        *,
        min_freq: int = 1,
        max_size: int | None = None,
        lowercase: bool = False,
        split_regex: str | None = None,
        eos_at_newline: bool = True,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> Self:
        """Count words in ``inputs`` (streamed) and keep the frequent ones.

        ``vocab_size`` (or its alias ``max_size``) caps the total size, the 4 specials
        included; ``None`` or 0 means no cap. Words seen fewer than ``min_freq`` times are
        left to ``<unk>``.
        """
        if vocab_size and max_size and vocab_size != max_size:
            raise TokenizerError(
                f"vocab_size and max_size mean the same cap; got {vocab_size} and {max_size}"
            )
        cap = vocab_size or max_size
        specials = len(SPECIAL_PIECES)
        if cap and cap <= specials:
            raise TokenizerError(
                f"vocab_size {cap} is too small for a word tokenizer: the {specials} special "
                f"tokens and one word need at least {specials + 1}"
            )
        if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 1:
            raise TokenizerError(f"min_freq must be an integer >= 1, got {min_freq!r}")
        split = _splitter(lowercase, _compile(split_regex), eos_at_newline)
        line_ends = (EOS_PIECE,) if eos_at_newline else ()
        counts = count_corpus(inputs, "words", split, chunk_bytes, filler=line_ends)
        for piece in SPECIAL_PIECES:
            counts.pop(piece, None)
        ranked = sorted(
            (item for item in counts.items() if item[1] >= min_freq),
            key=lambda item: (-item[1], item[0]),
        )
        if cap:
            ranked = ranked[: cap - specials]
        tokenizer = cls(
            [word for word, _ in ranked],
            lowercase=lowercase,
            split_regex=split_regex,
            eos_at_newline=eos_at_newline,
        )
        logger.info(
            "word tokenizer: %d word types, kept %d (min_freq %d), vocab_size %d",
            len(counts),
            len(ranked),
            min_freq,
            tokenizer.vocab_size,
        )
        return tokenizer

    def __repr__(self) -> str:
        return (
            f"WordTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase}, "
            f"split_regex={self.split_regex!r}, eos_at_newline={self.eos_at_newline})"
        )
