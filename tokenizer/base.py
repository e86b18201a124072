"""The ``Tokenizer`` interface every kind implements, and the ``tokenizer.json`` meta file.

All kinds share one id layout for the special tokens (``<pad>`` = 0, ``<unk>`` = 1,
``<bos>`` = 2, ``<eos>`` = 3) so that models, data pipelines and decoders never need to ask
which kind of tokenizer they were given.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from tokenizer.errors import TokenizerError
from tokenizer.io import DEFAULT_CHUNK_BYTES, PathLike, iter_text_chunks, write_atomic

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_PIECES: tuple[str, ...] = ("<pad>", "<unk>", "<bos>", "<eos>")
"""Special token strings, indexed by id."""

META_FILE = "tokenizer.json"
META_FORMAT = "lmforge-tokenizer"
META_VERSION = 1


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


def write_meta(directory: PathLike, kind: str, vocab_size: int, **fields: Any) -> None:
    """Write ``tokenizer.json``: the file ``load_tokenizer`` reads first to learn the kind."""
    meta = {
        "format": META_FORMAT,
        "version": META_VERSION,
        "kind": kind,
        "vocab_size": vocab_size,
        "special_tokens": {piece: i for i, piece in enumerate(SPECIAL_PIECES)},
        **fields,
    }
    text = json.dumps(meta, ensure_ascii=False, indent=1) + "\n"
    write_atomic(Path(directory) / META_FILE, text.encode("utf-8"))


def read_meta(directory: PathLike) -> dict[str, Any]:
    """Read and check ``tokenizer.json`` in ``directory``; every problem is a ``TokenizerError``
    naming the file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TokenizerError(f"{directory}: tokenizer directory not found")
    path = directory / META_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TokenizerError(
            f"{path}: missing (not a tokenizer directory, or an incomplete save)"
        ) from None
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TokenizerError(
            f"{path}: corrupt (not valid UTF-8 at byte offset {exc.start})"
        ) from None
    except json.JSONDecodeError as exc:
        raise TokenizerError(
            f"{path}: corrupt JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise TokenizerError(
            f'{path}: not an lmforge tokenizer file (expected "format": "{META_FORMAT}")'
        )
    version = meta.get("version")
    if version != META_VERSION:
        raise TokenizerError(
            f"{path}: unsupported version {version!r} (this lmforge reads version {META_VERSION})"
        )
    specials = meta.get("special_tokens")
    expected = {piece: i for i, piece in enumerate(SPECIAL_PIECES)}
    if specials != expected:
        raise TokenizerError(f"{path}: special_tokens must be {expected}, got {specials!r}")
    require(meta, "kind", str, path)
    require(meta, "vocab_size", int, path)
    return meta


def require(meta: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    """``meta[key]`` if present with the right type, else a ``TokenizerError`` naming the field."""
    if key not in meta:
        raise TokenizerError(f"{path}: field {key!r} is missing")
    value = meta[key]
    # bool is an int subclass; a flag where a count belongs is corruption, not a count.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise TokenizerError(f"{path}: field {key!r} must be {names}, got {value!r}")
    return value


def meta_path(directory: PathLike) -> Path:
    """Path of the meta file inside ``directory`` (for error messages)."""
    return Path(directory) / META_FILE
