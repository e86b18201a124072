"""Token files and the two batching schemes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lm.config import DataConfig
from lm.training.data import (
    DataError,
    RandomBatches,
    SequentialBatches,
    resolve_corpus,
    tokenize_to_file,
)
from tokenizer import train_tokenizer


def test_sequential_rows_are_contiguous_across_batches() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    b = SequentialBatches(tokens, batch_size=4, seq_len=7, seed=0, random_offset=False)
    x0, y0, reset0 = b.batch(0)
    x1, y1, reset1 = b.batch(1)
    assert reset0 and not reset1
    assert (y0 == x0 + 1).all()  # targets are the next tokens (teacher forcing)
    assert (x1[:, 0] == x0[:, -1] + 1).all()  # each row continues where it stopped
    # rows are far apart contiguous streams
    assert (x0[1:, 0] - x0[:-1, 0] == b.row_len).all()
    last = b.batch(b.steps_per_epoch - 1)
    assert not last[2] and last[0].shape[1] <= 7  # the epoch's last batch may be shorter
    again = b.batch(b.steps_per_epoch)
    assert again[2]  # a new epoch resets the state


def test_sequential_distributed_ranks_split_the_global_rows() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    whole = SequentialBatches(tokens, 4, 5, seed=1)
    halves = [SequentialBatches(tokens, 4, 5, seed=1, rank=r, world_size=2) for r in range(2)]
    for step in (0, 3, whole.steps_per_epoch + 2):
        x, _, _ = whole.batch(step)
        parts = [h.batch(step)[0] for h in halves]
        assert (np.concatenate(parts) == x.numpy()).all()


def test_random_sampling_covers_the_corpus_once_per_epoch() -> None:
    n, T, B = 2000, 10, 8
    tokens = np.arange(n, dtype=np.uint16)
    b = RandomBatches(tokens, B, T, seed=3)
    seen: list[int] = []
    for step in range(b.steps_per_epoch):
        x, y, reset = b.batch(step)
        assert reset
        assert (y == x + 1).all()
        seen.extend(x.flatten().tolist())
    assert len(seen) == len(set(seen))  # windows never overlap within an epoch
    assert len(seen) >= n - 2 * T - B * T  # and together cover the stream
    # another epoch visits in another order
    assert not np.array_equal(b.starts(0), b.starts(b.steps_per_epoch))


def test_token_file_is_cached_and_compact(tmp_path: Path, small_corpus: Path) -> None:
    tok = train_tokenizer("char", [str(small_corpus)], None)
    tok_dir = tmp_path / "tok"
    tok.save(tok_dir)
    arr = tokenize_to_file([small_corpus], tok, tok_dir, tmp_path / "cache")
    assert arr.dtype == np.uint16
    assert tok.decode(arr.tolist()) == small_corpus.read_text()
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    again = tokenize_to_file([small_corpus], tok, tok_dir, tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == files
    assert np.array_equal(arr, again)


def test_directory_corpus_is_split_by_name(tmp_path: Path) -> None:
    for split in ("train", "valid", "test"):
        (tmp_path / f"c.{split}.txt").write_text("a b c\n")
    files = resolve_corpus(DataConfig(train=(str(tmp_path),)))
    assert [f.name for f in files.train] == ["c.train.txt"]
    assert [f.name for f in files.valid] == ["c.valid.txt"]
    assert [f.name for f in files.test] == ["c.test.txt"]


def test_missing_corpus_and_validation_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        resolve_corpus(DataConfig(train=(str(tmp_path / "nope.txt"),), valid_fraction=0.1))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no validation data"):
        resolve_corpus(DataConfig(train=(str(tmp_path / "a.txt"),)))


def test_too_small_corpus_for_batch() -> None:
    with pytest.raises(DataError, match="batch_size"):
        RandomBatches(np.arange(50, dtype=np.uint16), batch_size=20, seq_len=8, seed=0)
