"""Checkpoints that lie: nothing in them is executed (safetensors, JSON), and now nothing in them
can make the loader allocate terabytes, build for minutes, read forever, or hang the server's
startup. Each is one ``CheckpointError`` naming the file, and the good models still serve."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from test_service_helpers import make_checkpoint, test_settings

from lm.checkpoint import CheckpointError, load_checkpoint
from lm.pipeline import Pipeline
from service.metrics import Metrics
from service.registry import ModelRegistry


def with_model(directory: Path, **changes: object) -> Path:
    """A tiny checkpoint whose config.json claims ``changes`` (the weights stay as they are)."""
    make_checkpoint(directory)
    meta = json.loads((directory / "config.json").read_text())
    meta["model"].update(changes)
    (directory / "config.json").write_text(json.dumps(meta))
    return directory


@pytest.mark.parametrize(("changes", "says"), [
    ({"n_embd": 10**9}, "model.n_embd = 1000000000 does not fit"),
    ({"n_layer": 10**7}, "model.n_layer = 10000000 does not fit"),
    ({"block_size": 10**12}, "model.block_size = 1000000000000 is over"),
    ({"vocab_size": 10**8}, "tokenizer has 291 tokens"),
    ({"n_embd": 32, "n_head": 2}, "weights do not match config.json: .* is \\[48, 16\\]"),  # plausible, not these
])
def test_a_config_the_weights_do_not_describe_is_refused_at_once(tmp_path: Path, changes: dict, says: str) -> None:
    directory = with_model(tmp_path / "lying", **changes)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=says):
        load_checkpoint(directory)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("special", ["fifo", "dev-zero", "huge"])
def test_tokenizer_files_that_are_not_plain_files_are_never_read(tmp_path: Path, special: str) -> None:
    directory = tmp_path / "ckpt"
    make_checkpoint(directory)
    target = directory / "tokenizer.json"
    target.unlink()
    if special == "fifo":
        os.mkfifo(target)  # opening it would block until a writer comes: forever
    elif special == "dev-zero":
        target.symlink_to("/dev/zero")
    else:
        with open(target, "wb") as f:
            f.truncate(300 << 20)  # sparse: 300 MiB that would be read whole
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="not a regular file|over the"):
        load_checkpoint(directory)
    assert time.perf_counter() - t0 < 5


def test_config_and_weights_that_are_fifos_are_refused(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    make_checkpoint(directory)
    (directory / "model.safetensors").unlink()
    os.mkfifo(directory / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(directory)


def test_one_hostile_directory_never_keeps_the_others_from_serving(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ckpts"
    root.mkdir()
    make_checkpoint(root / "good")
    make_checkpoint(root / "fifo")
    (root / "fifo" / "tokenizer.json").unlink()
    os.mkfifo(root / "fifo" / "tokenizer.json")
    with_model(root / "huge", n_embd=10**9)
    make_checkpoint(root / "stuck")
    real = Pipeline.from_checkpoint

    def hang_on_stuck(path: Path, **kw: object) -> Pipeline:
        if Path(path).name == "stuck":
            time.sleep(60)  # a filesystem that never answers
        return real(path, **kw)

    monkeypatch.setattr(Pipeline, "from_checkpoint", staticmethod(hang_on_stuck))
    registry = ModelRegistry(test_settings(root, load_timeout_s=1.0), Metrics())
    t0 = time.perf_counter()
    registry.load_all()
    elapsed = time.perf_counter() - t0
    try:
        assert list(registry.models) == ["good"]
        assert set(registry.failed) == {"fifo", "huge", "stuck"}
        assert "load_timeout_s" in registry.failed["stuck"] and "not a regular file" in registry.failed["fifo"]
        assert elapsed < 10, f"startup took {elapsed:.1f} s"
    finally:
        registry.stop()
