"""Streaming, validated reading of UTF-8 corpora.

Training a tokenizer and tokenizing a corpus both read text through ``iter_text_chunks`` so a
corpus larger than memory works, and so every kind reports bad input the same way: a
``TokenizerError`` naming the file and, for bad UTF-8, the byte offset of the first bad byte.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import stat
import tempfile
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, BinaryIO

from tokenizer.errors import TokenizerError

PathLike = str | os.PathLike[str]
DEFAULT_CHUNK_BYTES = 1 << 20


def iter_text_chunks(path: PathLike, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[str]:
    """Yield the text of a UTF-8 file in pieces of roughly ``chunk_bytes`` bytes.

    Each piece except the last ends with ``"\\n"``: tokens never span a newline (for
    sentencepiece kinds ``"\\n"`` is a piece of its own), so tokenizing piece by piece gives
    the same ids as tokenizing the whole file. Only a line longer than ``chunk_bytes`` is cut
    elsewhere: after its last space within the buffered text, or anywhere if it has none, which
    keeps memory bounded at about two chunks whatever the input.

    Raises ``TokenizerError`` for a missing or unreadable file and for bytes that are not UTF-8
    (naming the byte offset of the first bad byte). Empty files yield nothing.
    """
    if chunk_bytes <= 0:
        raise TokenizerError(f"chunk_bytes must be positive, got {chunk_bytes}")
    name = str(path)
    handle = open_corpus(path)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    consumed = 0  # file bytes handed to the decoder so far
    pending = ""  # decoded text after the last newline, not yet yielded
    with handle:
        while True:
            try:
                block = handle.read(chunk_bytes)
            except OSError as exc:
                raise TokenizerError(f"{name}: cannot read ({exc.strerror})") from None
            final = not block
            # Bytes of an incomplete character kept from the previous block start before
            # this block, so the decoder's error positions are relative to them.
            held = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block, final=final)
            except UnicodeDecodeError as exc:
                offset = consumed - held + exc.start
                raise TokenizerError(f"{name}: not valid UTF-8 at byte offset {offset}") from None
            consumed += len(block)
            if final:
                if pending:
                    yield pending
                return
            if pending:
                text = pending + text
            cut = text.rfind("\n") + 1
            if cut == 0 and len(text) >= chunk_bytes:
                # One very long line: cut after a space (harmless to every kind) if possible.
                cut = text.rfind(" ") + 1 or len(text)
            if cut:
                yield text[:cut]
            pending = text[cut:]


def open_corpus(path: PathLike) -> BinaryIO:
    """Open ``path`` for binary reading, turning OS errors into a ``TokenizerError``."""
    name = str(path)
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise TokenizerError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise TokenizerError(f"{name}: is a directory, expected a text file") from None
    except OSError as exc:
        raise TokenizerError(f"{name}: cannot open ({exc.strerror})") from None


def check_inputs(inputs: Sequence[PathLike] | PathLike) -> list[Path]:
    """Validate a list of training files up front, so a typo in the last of several inputs
    fails before minutes of reading the first."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    paths = [Path(p) for p in inputs]
    if not paths:
        raise TokenizerError("no input files given")
    for path in paths:
        if path.is_dir():
            raise TokenizerError(f"{path}: is a directory, expected a text file")
        if not path.exists():
            raise TokenizerError(f"{path}: file not found")
        if path.stat().st_size == 0:
            raise TokenizerError(f"{path}: empty file (no text to train on)")
    return paths


def empty_corpus_error(path: PathLike, what: str) -> TokenizerError:
    """The error for an input that has bytes but nothing a tokenizer can learn from."""
    return TokenizerError(f"{path}: empty corpus (no {what} to train on)")


MAX_FILE_BYTES = 256 << 20
"""The largest metadata or vocabulary file read whole (``tokenizer.json``, ``tokenizer.model``,
``config.json``): far above any real one, far below what a hostile one could make us allocate."""


def read_regular_file(path: PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path``, which must be a regular file (followed through symlinks) of at most
    ``max_bytes``. A FIFO, a device (``/dev/zero``) or a socket is refused before it is opened --
    opening a FIFO would block forever -- and so is an oversized file. Raises
    ``FileNotFoundError`` for a missing file and ``TokenizerError`` for the rest."""
    path = Path(path)
    info = path.stat()  # FileNotFoundError propagates: callers say what a missing file means
    if not stat.S_ISREG(info.st_mode):
        raise TokenizerError(f"{path}: not a regular file (a FIFO, device or socket is never read)")
    if info.st_size > max_bytes:
        raise TokenizerError(f"{path}: {info.st_size:,} bytes, over the {max_bytes:,}-byte limit for this file")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TokenizerError(f"{path}: grew past the {max_bytes:,}-byte limit while being read")
    return data


def count_corpus(
    inputs: Sequence[PathLike],
    what: str,
    split: Callable[[str], Iterable[str]] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    filler: Collection[str] = (),
) -> Counter[str]:
    """How often each unit occurs in ``inputs``, streamed chunk by chunk: the units are
    ``split(chunk)``, or the characters when ``split`` is None. Every input is checked before
    the first is read, and an input with no units (``filler`` units, such as line-end markers,
    do not count) is an empty-corpus error naming it and ``what`` was missing."""
    paths = check_inputs(inputs)
    counts: Counter[str] = Counter()
    for path in paths:
        in_file: Counter[str] = Counter()
        for chunk in iter_text_chunks(path, chunk_bytes):
            in_file.update(chunk if split is None else split(chunk))
        if not any(n for unit, n in in_file.items() if unit not in filler):
            raise empty_corpus_error(path, what)
        counts.update(in_file)
    return counts


@contextlib.contextmanager
def atomic_writer(path: PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """A file handle whose contents replace ``path`` only when the block completes: written to
    a temporary sibling (``.<name>.tmp-*``, which crash recovery knows), fsynced, renamed over
    ``path``, and the directory fsynced. Readers see the old file or the new one, never half of
    one; an exception in the block removes the temporary and leaves ``path`` as it was. The one
    atomic writer for tokenizer files, checkpoints, pointers and token caches."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: PathLike, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` atomically (see ``atomic_writer``); text is UTF-8."""
    if isinstance(data, str):
        with atomic_writer(path, "w", encoding="utf-8") as handle:
            handle.write(data)
    else:
        with atomic_writer(path, "wb") as handle:
            handle.write(data)


def fsync_dir(directory: PathLike) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
