"""Subword tokenizers (``bpe``, ``unigram``) trained and run by sentencepiece.

The trainer is configured so that ``decode(encode(text)) == text`` for every Unicode string:
no normalisation (``identity``), no dummy-prefix space, no collapsing of whitespace, byte
fallback for characters outside the vocabulary, and ``"\\n"`` as a piece of its own (training
sentences are lines, so sentencepiece would otherwise never see a newline). The one character
sentencepiece cannot round-trip, its own space marker U+2581 ``"▁"`` (which it reads as a
space), is spelled with its three byte tokens instead.

Ids follow the project layout: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3, then ``"\\n"``,
the 256 byte tokens and the learned pieces.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Self

import sentencepiece as spm

from tokenizer import meta
from tokenizer.base import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_PIECES,
    UNK_ID,
    Tokenizer,
    check_ids,
)
from tokenizer.errors import TokenizerError
from tokenizer.io import (
    DEFAULT_CHUNK_BYTES,
    PathLike,
    check_inputs,
    empty_corpus_error,
    iter_text_chunks,
    write_atomic,
)
from tokenizer.kinds import SENTENCEPIECE_KINDS

logger = logging.getLogger(__name__)

MODEL_FILE = "tokenizer.model"
_SPECIAL_OPTIONS = {
    f"{name}_{field}": value
    for name, token_id in (("pad", PAD_ID), ("unk", UNK_ID), ("bos", BOS_ID), ("eos", EOS_ID))
    for field, value in (("id", token_id), ("piece", SPECIAL_PIECES[token_id]))
}
"""The trainer options that put lmforge's four special tokens at their shared ids."""
SPACE_MARKER = "\u2581"
"""sentencepiece's visible space; in input text it would come back as " "."""


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model behind the ``Tokenizer`` interface.

    ``encode`` returns exactly sentencepiece's own ids (U+2581 aside). For ``bpe`` it hands the
    lines to sentencepiece's C++ batch encoder: BPE encoding time grows faster than linearly with
    the length of one input, so a megabyte chunk encoded line by line is about four times faster,
    and since no piece spans ``"\\n"`` the ids are the same. ``unigram`` (linear Viterbi) is
    fastest on the whole text, so it gets one direct call.
    """

    def __init__(self, model_proto: bytes, kind: str) -> None:
        if kind not in SENTENCEPIECE_KINDS:
            raise TokenizerError(
                f"sentencepiece kind must be one of {', '.join(SENTENCEPIECE_KINDS)}, got {kind!r}"
            )
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError, TypeError) as exc:
            detail = _sentencepiece_detail(exc) or "cannot parse it"
            raise TokenizerError(f"not a valid sentencepiece model ({detail})") from None
        if processor.get_piece_size() == 0:
            raise TokenizerError("not a valid sentencepiece model (no pieces)")
        found = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
        expected = (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
        if found != expected:
            raise TokenizerError(
                f"special ids (pad, unk, bos, eos) must be {expected}, the model has {found}"
            )
        self.kind = kind
        self._proto = bytes(model_proto)
        self._sp = processor
        self._vocab_size = processor.get_piece_size()
        newline = processor.piece_to_id("\n")
        has_newline = newline != UNK_ID and not processor.is_byte(newline)
        self._newline_id = newline if has_newline and kind == "bpe" else None
        marker_bytes = [processor.piece_to_id(f"<0x{b:02X}>") for b in SPACE_MARKER.encode()]
        self._marker_ids = marker_bytes if all(processor.is_byte(i) for i in marker_bytes) else None

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def processor(self) -> spm.SentencePieceProcessor:
        """The underlying sentencepiece processor (for benchmarks and piece inspection)."""
        return self._sp

    def encode(self, text: str) -> list[int]:
        try:
            if self._marker_ids is not None and SPACE_MARKER in text:
                return self._encode_with_markers(text)
            return self._encode_lines(text)
        except RuntimeError:
            # The binding cannot pass lone surrogates (str that is not Unicode text, e.g. from
            # ``errors="surrogateescape"``) to C++; encode them as U+FFFD like a decoder would.
            clean = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
            if clean == text:
                raise
            return self.encode(clean)

    def _encode_lines(self, text: str) -> list[int]:
        """sentencepiece's ids for ``text``; line by line in one batch call for ``bpe``."""
        if self._newline_id is None or "\n" not in text:
            return self._sp.encode(text)
        encoded = self._sp.encode(text.split("\n"))
        newline = self._newline_id
        ids = encoded[0]
        for line in encoded[1:]:
            ids.append(newline)
            ids += line
        return ids

    def _encode_with_markers(self, text: str) -> list[int]:
        """Spell each U+2581 as its UTF-8 byte tokens, which decode back to U+2581 itself."""
        assert self._marker_ids is not None
        parts = text.split(SPACE_MARKER)
        ids = self._encode_lines(parts[0])
        for part in parts[1:]:
            ids += self._marker_ids
            ids += self._encode_lines(part)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        check_ids(ids, self._vocab_size)
        return self._sp.decode(ids if isinstance(ids, list) else [int(i) for i in ids])

    def fallback_ids(self) -> tuple[int, ...]:
        return (self.unk_id, *(i for i in range(self._vocab_size) if self._sp.is_byte(i)))

    def token_bytes(self, token_id: int) -> bytes:
        check_ids([token_id], self._vocab_size)
        if self._sp.is_byte(token_id):
            return bytes([int(self._sp.id_to_piece(token_id)[3:5], 16)])  # "<0xE2>"
        return self.decode([token_id]).encode("utf-8")

    def save(self, directory: PathLike) -> None:
        # The model first: a directory whose tokenizer.json exists is complete.
        write_atomic(Path(directory) / MODEL_FILE, self._proto)
        meta.write(directory, self, model_file=MODEL_FILE)

    @classmethod
    def load(cls, directory: PathLike) -> Self:
        saved, path = meta.read_of(directory, SENTENCEPIECE_KINDS)
        model_name = meta.require(saved, "model_file", str, path)
        model_path = Path(directory) / model_name
        if Path(model_name).name != model_name:
            raise TokenizerError(f"{path}: model_file must be a file name, got {model_name!r}")
        proto = meta.read_file(model_path, "incomplete tokenizer directory")
        pieces = model_path.name + " has {} pieces"
        return meta.rebuild(saved, model_path, lambda: cls(proto, saved["kind"]), pieces)

    @classmethod
    def train(
        cls,
        kind: str,
        inputs: Sequence[PathLike],
        vocab_size: int | None,
        *,
        character_coverage: float = 0.9995,
        model_type: str | None = None,
        split_digits: bool = True,
        input_sentence_size: int = 5_000_000,
        shuffle_input_sentence: bool = True,
        max_sentence_length: int = 16384,
        num_threads: int | None = None,
        seed: int = 0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> Self:
        """Train a ``kind`` model of exactly ``vocab_size`` pieces (specials included).

        Lines are streamed to sentencepiece; at most ``input_sentence_size`` of them (a
        uniform sample when ``shuffle_input_sentence``; 0 means all) are kept in memory, so a
        corpus of any size trains. Lines longer than ``max_sentence_length`` bytes are cut at
        spaces rather than silently dropped. ``seed`` fixes sentencepiece's sampling.
        """
        if kind not in SENTENCEPIECE_KINDS:
            raise TokenizerError(
                f"sentencepiece kind must be one of {', '.join(SENTENCEPIECE_KINDS)}, got {kind!r}"
            )
        if model_type is not None and model_type != kind:
            raise TokenizerError(f"model_type {model_type!r} contradicts kind {kind!r}")
        if not vocab_size:
            raise TokenizerError(f"vocab_size is required for a {kind} tokenizer")
        if not 0.0 < character_coverage <= 1.0:
            raise TokenizerError(f"character_coverage must be in (0, 1], got {character_coverage}")
        if max_sentence_length < 16:
            raise TokenizerError(f"max_sentence_length must be >= 16, got {max_sentence_length}")
        paths = check_inputs(inputs)
        failures: list[BaseException] = []
        sentences = _sentences(paths, chunk_bytes, max_sentence_length, failures)
        model = io.BytesIO()
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences,
                model_writer=model,
                model_type=kind,
                vocab_size=vocab_size,
                character_coverage=character_coverage,
                byte_fallback=True,
                **_SPECIAL_OPTIONS,
                user_defined_symbols=["\n"],
                split_digits=split_digits,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                allow_whitespace_only_pieces=True,
                input_sentence_size=input_sentence_size,
                shuffle_input_sentence=shuffle_input_sentence,
                max_sentence_length=max_sentence_length,
                num_threads=num_threads or os.cpu_count() or 1,
                minloglevel=2,
            )
        except RuntimeError as exc:
            if failures:  # our reader failed inside sentencepiece's loop: report that instead
                raise failures[0] from None
            raise _training_error(exc, kind, vocab_size, paths) from None
        tokenizer = cls(model.getvalue(), kind)
        logger.info("%s tokenizer: vocab_size %d", kind, tokenizer.vocab_size)
        return tokenizer

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _sentences(
    paths: Sequence[Path],
    chunk_bytes: int,
    max_bytes: int,
    failures: list[BaseException],
) -> Iterator[str]:
    """Non-empty lines of every file, each at most ``max_bytes`` UTF-8 bytes.

    sentencepiece wraps exceptions raised here in a ``RuntimeError``; the original goes to
    ``failures`` so the caller can re-raise the clear message.
    """
    try:
        for path in paths:
            lines = 0
            for chunk in iter_text_chunks(path, chunk_bytes):
                for line in chunk.split("\n"):
                    if line:
                        lines += 1
                        yield from _bounded(line, max_bytes)
            if lines == 0:
                raise empty_corpus_error(path, "text")
    except BaseException as exc:
        failures.append(exc)
        raise


def _bounded(line: str, max_bytes: int) -> Iterator[str]:
    """``line`` cut into pieces of at most ``max_bytes`` UTF-8 bytes, preferably before a space
    (sentencepiece would skip an over-long line entirely)."""
    if len(line) * 4 <= max_bytes or len(line.encode("utf-8")) <= max_bytes:
        yield line
        return
    step = max_bytes // 4  # characters; a character is at most 4 bytes
    start = 0
    while start < len(line):
        end = min(start + step, len(line))
        if end < len(line):
            space = line.rfind(" ", start + 1, end)
            if space > start:
                end = space
        yield line[start:end]
        start = end


_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def _training_error(
    exc: RuntimeError, kind: str, vocab_size: int, paths: Sequence[Path]
) -> TokenizerError:
    """Turn sentencepiece's assertion text into a message about the user's request."""
    message = str(exc)
    files = ", ".join(str(p) for p in paths)
    if match := _TOO_HIGH.search(message):
        return TokenizerError(
            f"vocab_size {vocab_size} is too large for a {kind} tokenizer on {files}: "
            f"this corpus supports at most {match.group(2)}"
        )
    if match := _TOO_LOW.search(message):
        return TokenizerError(
            f"vocab_size {vocab_size} is too small for a {kind} tokenizer on {files}: the "
            f"special, byte and character pieces alone need {match.group(2)} (raise vocab_size "
            f"or lower character_coverage)"
        )
    detail = _sentencepiece_detail(exc)
    return TokenizerError(f"sentencepiece could not train a {kind} tokenizer on {files}: {detail}")


def _sentencepiece_detail(exc: BaseException) -> str:
    """The human part of a sentencepiece error, without its ``INTERNAL: file.cc(123) [check]``
    prefix (empty if there is none)."""
    message = str(exc).strip()
    if "] " in message or message.endswith("]"):
        message = message.rsplit("]", 1)[-1]
    return message.removeprefix("INTERNAL:").strip()
