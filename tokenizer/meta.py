"""The ``tokenizer.json`` meta file every tokenizer kind writes: its format, and the checked
reading, writing and rebuilding the kinds share (``from tokenizer import meta``, then
``meta.write``, ``meta.read_of``, ``meta.require``, ``meta.rebuild``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tokenizer.base import SPECIAL_PIECES, Tokenizer
from tokenizer.errors import TokenizerError
from tokenizer.io import PathLike, read_regular_file, write_atomic
from tokenizer.kinds import IMPORTED_KIND

META_FILE = "tokenizer.json"
META_FORMAT = "lmforge-tokenizer"
META_VERSION = 1


def write(directory: PathLike, tokenizer: Tokenizer, **fields: Any) -> None:
    """Write ``tokenizer.json`` for ``tokenizer`` (its kind, its vocab size and the ``fields``
    its kind needs to rebuild it): the file ``load_tokenizer`` reads first to learn the kind."""
    meta = {
        "format": META_FORMAT,
        "version": META_VERSION,
        "kind": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "special_tokens": {piece: i for i, piece in enumerate(SPECIAL_PIECES)},
        **fields,
    }
    text = json.dumps(meta, ensure_ascii=False, indent=1) + "\n"
    write_atomic(Path(directory) / META_FILE, text.encode("utf-8"))


def read(directory: PathLike) -> dict[str, Any]:
    """Read and check ``tokenizer.json`` in ``directory``; every problem is a ``TokenizerError``
    naming the file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TokenizerError(f"{directory}: tokenizer directory not found")
    path = directory / META_FILE
    raw = read_file(path, "not a tokenizer directory, or an incomplete save")
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
    if specials != expected and meta.get("kind") != IMPORTED_KIND:  # an imported vocabulary has its own
        raise TokenizerError(f"{path}: special_tokens must be {expected}, got {specials!r}")
    require(meta, "kind", str, path)
    require(meta, "vocab_size", int, path)
    return meta


def read_file(path: Path, if_missing: str) -> bytes:
    """The bytes of one of a tokenizer directory's files; a missing file is an error that says
    ``if_missing`` (what its absence means), an unreadable one says why."""
    try:
        return read_regular_file(path)
    except FileNotFoundError:
        raise TokenizerError(f"{path}: missing ({if_missing})") from None
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read ({exc.strerror})") from None


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


def path_in(directory: PathLike) -> Path:
    """Path of the meta file inside ``directory`` (for error messages)."""
    return Path(directory) / META_FILE


def read_of(directory: PathLike, kinds: Sequence[str]) -> tuple[dict[str, Any], Path]:
    """``read`` for a loader that reads only ``kinds``; returns the meta and its path."""
    meta = read(directory)
    path = path_in(directory)
    if meta["kind"] not in kinds:
        expected = repr(kinds[0]) if len(kinds) == 1 else f"one of {', '.join(kinds)}"
        raise TokenizerError(f"{path}: kind is {meta['kind']!r}, expected {expected}")
    return meta, path


_T = TypeVar("_T", bound="Tokenizer")


def rebuild(meta: dict[str, Any], where: Path, build: Callable[[], _T], built: str) -> _T:
    """Build the tokenizer a meta file describes: a construction error names the file
    ``where`` it came from, and the saved ``vocab_size`` must agree with the built one
    (``built`` says in words what the vocabulary came from, ``{}`` standing for its size)."""
    try:
        tokenizer = build()
    except TokenizerError as exc:
        raise TokenizerError(f"{where}: {exc}") from None
    if tokenizer.vocab_size != meta["vocab_size"]:
        raise TokenizerError(
            f"{where.parent / META_FILE}: vocab_size is {meta['vocab_size']} but "
            + built.format(tokenizer.vocab_size)
        )
    return tokenizer
