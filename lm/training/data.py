"""Corpus -> memory-mapped token file -> batches for teacher forcing.

A corpus is tokenized once into ``<cache>/<key>.bin`` (uint16 when the vocabulary fits, else
uint32) and memory-mapped, so corpora larger than memory train and later runs skip the work.
The cache key hashes the files' paths, sizes and modification times, the tokenizer's saved
files and the start ids, so a changed corpus or tokenizer is tokenized again. Each file's tokens
are preceded by the text-start ids (``lm.context``: the tokenizer's line break), so the first
line of every file is seen in the same role as every other line's, and as texts are at inference.

Two batching schemes (Dive into Deep Learning, "Reading Long Sequence Data"):

* ``RandomBatches``: each epoch starts at a random offset, cuts the stream into non-overlapping
  windows and visits them in random order; batches are independent (state reset each batch).
* ``SequentialBatches``: the stream is split into ``batch_size`` contiguous rows; batch ``i``
  takes columns ``[i*T, (i+1)*T)`` of every row, so a row continues across batches and the
  recurrent state is carried over and detached (truncated BPTT).

Both are pure functions of the step number, so resuming at step ``s`` replays exactly the
batches an uninterrupted run would have seen, and each distributed rank takes its own slice of
the global batch's rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lm.config import DataConfig, RunConfig, TrainConfig
from lm.training.errors import TrainingError
from tokenizer import Tokenizer, load_tokenizer, train_tokenizer
from tokenizer.io import atomic_writer

log = logging.getLogger(__name__)


def prepare_tokenizer(run: RunConfig, run_dir: Path, train_files: list[Path]) -> Tokenizer:
    """The run's tokenizer: the one saved in ``run_dir/tokenizer`` (a resumed or repeated run),
    else ``tokenizer.path``'s, else one trained on ``train_files``; saved into the run."""
    tok_dir = run_dir / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        return load_tokenizer(tok_dir)
    cfg = run.tokenizer
    if cfg.path:
        tok = load_tokenizer(cfg.path)
    else:
        options: dict[str, Any] = {}
        if cfg.kind == "word":
            options = {"min_freq": cfg.min_freq, "eos_at_newline": cfg.eos_at_newline}
        elif cfg.kind == "char":
            options = {"unk_policy": cfg.unk_policy}
        tok = train_tokenizer(cfg.kind, [str(f) for f in train_files], cfg.vocab_size or None, **options)
    tok_dir.mkdir(parents=True, exist_ok=True)
    tok.save(tok_dir)
    return load_tokenizer(tok_dir)


class DataError(ValueError):
    """The corpus is missing, empty or too small for the requested batches."""


@dataclass(frozen=True)
class CorpusFiles:
    train: list[Path]
    valid: list[Path]
    test: list[Path]


def _expand(paths: tuple[str, ...], split: str) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and split in f.name)
            if not found:
                raise DataError(f"{p}: no file with {split!r} in its name")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: corpus file not found")
    return out


def resolve_corpus(cfg: DataConfig, base: Path | None = None) -> CorpusFiles:
    """The train/valid/test files a data config names (a directory is searched by split name)."""
    if not cfg.train:
        raise DataError("data.train is empty: name one or more text files or a directory")

    def rel(paths: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(base / p) if base and not Path(p).is_absolute() else p for p in paths)

    train_paths = rel(cfg.train)
    corpus_dir = Path(train_paths[0]) if len(train_paths) == 1 and Path(train_paths[0]).is_dir() else None

    def split(named: tuple[str, ...], name: str) -> list[Path]:
        if named:
            return _expand(rel(named), name)
        if corpus_dir is not None and any(name in f.name for f in corpus_dir.iterdir()):
            return _expand(train_paths, name)
        return []

    train = _expand(train_paths, "train")
    valid, test = split(cfg.valid, "valid"), split(cfg.test, "test")
    if not valid and cfg.valid_fraction == 0:
        raise DataError("no validation data: set data.valid (files) or data.valid_fraction (e.g. 0.1)")
    return CorpusFiles(train, valid, test)


def _file_digest(files: list[Path], tokenizer_dir: Path, start: Sequence[int]) -> str:
    h = hashlib.sha256()
    h.update(f"start={list(start)}\n".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    for f in sorted(tokenizer_dir.iterdir()):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:20]


def load_splits(
    cfg: DataConfig,
    files: CorpusFiles,
    tokenizer: Tokenizer,
    run_dir: Path,
    start: Sequence[int],
    *,
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The run's train, validation and test token streams (test None when there is no test
    split), memory-mapped from the cache. The main process tokenizes; the others wait at
    ``barrier`` and open its files. With no validation files, the last ``valid_fraction`` of
    the training stream is held out."""
    cache = Path(cfg.cache_dir) if cfg.cache_dir else run_dir / "data"
    tok_dir = run_dir / "tokenizer"

    def tokens_of(split: list[Path]) -> np.ndarray:
        return tokenize_to_file(split, tokenizer, tok_dir, cache, start=start)

    if is_main:
        for split in (files.train, files.valid, files.test):
            if split:
                tokens_of(split)
    barrier()
    train = tokens_of(files.train)
    if files.valid:
        valid = tokens_of(files.valid)
    else:
        cut = int(len(train) * (1 - cfg.valid_fraction))
        train, valid = train[:cut], train[cut:]
    return train, valid, tokens_of(files.test) if files.test else None


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def tokenize_to_file(files: list[Path], tokenizer: Tokenizer, tokenizer_dir: Path, cache_dir: Path,
                     start: Sequence[int] = ()) -> np.ndarray:
    """Tokenize ``files`` (streamed, chunk by chunk) into a cached memory-mapped token array,
    each file preceded by ``start``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _file_digest(files, tokenizer_dir, start)
    path = cache_dir / f"{key}.bin"
    meta_path = cache_dir / f"{key}.json"
    dtype = token_dtype(tokenizer.vocab_size)
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("dtype") == dtype.name and path.stat().st_size == meta["tokens"] * dtype.itemsize:
            log.info("reusing token file %s (%d tokens)", path, meta["tokens"])
            return np.memmap(path, dtype=dtype, mode="r")
    n = 0
    with atomic_writer(path) as out:
        for f in files:
            if start:
                out.write(np.asarray(start, dtype=dtype).tobytes())
                n += len(start)
            for ids in tokenizer.encode_file(f):
                out.write(np.asarray(ids, dtype=dtype).tobytes())
                n += len(ids)
        if n == len(start) * len(files):  # the block fails: no cache file is written
            raise DataError(f"{', '.join(map(str, files))}: the corpus is empty (no tokens)")
    meta_path.write_text(json.dumps({"tokens": n, "dtype": dtype.name, "files": [str(f) for f in files]}))
    log.info("tokenized %s -> %s (%d tokens)", ", ".join(map(str, files)), path, n)
    return np.memmap(path, dtype=dtype, mode="r")


def _to_tensor(rows: np.ndarray) -> Tensor:
    return torch.from_numpy(rows.astype(np.int64, copy=False))


class RandomBatches:
    """Random non-overlapping windows; every window of an epoch is visited once."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if len(tokens) < seq_len + 2:
            raise DataError(f"corpus has {len(tokens)} tokens; need more than seq_len + 1 = {seq_len + 1}")
        self.tokens, self.B, self.T, self.seed = tokens, batch_size, seq_len, seed
        self.rank, self.world = rank, world_size
        self.windows = (len(tokens) - 1 - (seq_len - 1)) // seq_len  # after the worst-case offset
        if self.windows < batch_size:
            raise DataError(
                f"corpus of {len(tokens)} tokens gives {self.windows} windows of {seq_len}; "
                f"batch_size {batch_size} needs at least that many"
            )
        self.steps_per_epoch = self.windows // batch_size
        self._epoch, self._order, self._offset = -1, np.empty(0, dtype=np.int64), 0

    def _plan(self, epoch: int) -> None:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._offset = int(rng.integers(0, self.T))
            self._order = rng.permutation(self.windows)
            self._epoch = epoch

    def starts(self, step: int) -> np.ndarray:
        """Start offsets of the global batch at ``step``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        self._plan(epoch)
        return self._offset + self._order[k * self.B : (k + 1) * self.B] * self.T

    def batch(self, step: int) -> tuple[Tensor, Tensor, bool]:
        """``(inputs, targets, reset_state)`` for this rank; inputs are tokens t, targets t+1."""
        starts = self.starts(step)
        per = self.B // self.world
        starts = starts[self.rank * per : (self.rank + 1) * per]
        idx = starts[:, None] + np.arange(self.T + 1)
        rows = self.tokens[idx]
        return _to_tensor(rows[:, :-1]), _to_tensor(rows[:, 1:]), True


class SequentialBatches:
    """Contiguous rows across batches (truncated BPTT); ``reset_state`` is True at epoch starts."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int,
                 rank: int = 0, world_size: int = 1, random_offset: bool = True) -> None:
        self.tokens, self.B, self.T, self.seed = tokens, batch_size, seq_len, seed
        self.rank, self.world, self.random_offset = rank, world_size, random_offset
        self.row_len = (len(tokens) - 1 - (seq_len - 1 if random_offset else 0)) // batch_size
        if self.row_len < 2:
            raise DataError(f"corpus of {len(tokens)} tokens is too small for batch_size {batch_size}")
        self.steps_per_epoch = -(-self.row_len // seq_len)

    def _offset(self, epoch: int) -> int:
        if not self.random_offset:
            return 0
        return int(np.random.default_rng([self.seed, epoch]).integers(0, self.T))

    def batch(self, step: int) -> tuple[Tensor, Tensor, bool]:
        epoch, i = divmod(step, self.steps_per_epoch)
        off = self._offset(epoch)
        per = self.B // self.world
        rows = np.arange(self.rank * per, (self.rank + 1) * per)
        c0 = i * self.T
        c1 = min(c0 + self.T, self.row_len)
        base = off + rows[:, None] * self.row_len
        idx = base + np.arange(c0, c1 + 1)[None, :]
        data = self.tokens[idx]
        return _to_tensor(data[:, :-1]), _to_tensor(data[:, 1:]), i == 0


def eval_batches(tokens: np.ndarray, batch_size: int, seq_len: int) -> SequentialBatches:
    """Validation/test batches: the whole stream once, in order, as contiguous rows."""
    B = max(1, min(batch_size, (len(tokens) - 1) // 2))
    return SequentialBatches(tokens, B, seq_len, seed=0, random_offset=False)


def make_batches(tokens: np.ndarray, batching: str, cfg: TrainConfig, *, is_rnn: bool, max_context: int | None,
                 dist: Any) -> tuple[bool, RandomBatches | SequentialBatches]:  # noqa: ANN401 -- a DistInfo
    """The run's batches: sequential (state carried across batches) for ``batching =
    "sequential"``, or ``"auto"`` with an RNN; else random windows. Returns whether they are
    sequential, and them."""
    sequential = batching == "sequential" or (batching == "auto" and is_rnn)
    if max_context is not None and cfg.seq_len > max_context:
        raise TrainingError(f"train.seq_len ({cfg.seq_len}) exceeds the model's block_size ({max_context})")
    kind = SequentialBatches if sequential else RandomBatches
    return sequential, kind(tokens, cfg.batch_size, cfg.seq_len, cfg.seed, rank=dist.rank, world_size=dist.world_size)
