"""Crash safety: SIGKILL at random moments, SIGTERM, a full disk during a save."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lm.checkpoint import load_checkpoint, resolve_checkpoint_dir
from lm.config import run_config_from_dict
from lm.training.trainer import Trainer, TrainingError, train

CONFIG = """
[data]
train = ["{corpus}"]
valid_fraction = 0.1
[tokenizer]
kind = "char"
[model]
family = "transformer"
block_size = 32
n_layer = 2
n_head = 2
n_embd = 64
dropout = 0.1
[train]
out_dir = "{out}"
batch_size = 8
seq_len = 32
max_steps = {steps}
eval_every = 10
save_every = 3
log_every = 1
progress = false
precision = "fp32"
threads = 1
warmup_steps = 2
"""


def start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def latest_step(run_dir: Path) -> int:
    p = run_dir / "latest"
    return int(p.read_text().strip().split("-")[1]) if p.is_file() else 0


def weights(path: Path) -> dict[str, torch.Tensor]:
    model, _, _ = load_checkpoint(path)
    return model.state_dict()


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(small_corpus: Path, tmp_path: Path) -> None:
    steps = 30
    for name in ("ref", "crash"):
        (tmp_path / f"{name}.toml").write_text(CONFIG.format(corpus=small_corpus, out=tmp_path / name, steps=steps))
    lmforge = [sys.executable, "-m", "lm.cli", "train"]
    ref = subprocess.run([*lmforge, "--config", str(tmp_path / "ref.toml")], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]

    run_dir = tmp_path / "crash"
    rng = random.Random(7)
    kills, in_write = 0, False
    cmd = [*lmforge, "--config", str(tmp_path / "crash.toml")]
    deadline = time.time() + 600
    while time.time() < deadline:
        proc = start(cmd, tmp_path)
        cmd = [*lmforge, "--resume", str(run_dir)]
        target = latest_step(run_dir) + rng.randint(1, 6)
        killed = False
        while proc.poll() is None:
            tmp_dirs = list(run_dir.glob(".step-*.tmp-*")) if run_dir.exists() else []
            # the third kill waits for a checkpoint to be mid-write
            if (kills == 2 and tmp_dirs) or (kills != 2 and latest_step(run_dir) >= target and kills < 3):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed = True
                in_write = in_write or bool(tmp_dirs)
                kills += 1
                break
            time.sleep(0.0005)
        if not killed:
            out, err = proc.communicate()
            assert proc.returncode == 0, err[-2000:]
            break
        # whatever the moment, the latest complete checkpoint loads
        if (run_dir / "latest").exists():
            load_checkpoint(resolve_checkpoint_dir(run_dir, prefer_best=False))
    assert kills >= 3 and in_write
    final_ref = weights(tmp_path / "ref" / f"step-{steps:08d}")
    final = weights(run_dir / f"step-{steps:08d}")
    for k in final_ref:
        assert torch.equal(final_ref[k], final[k]), k


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(small_corpus: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.format(corpus=small_corpus, out=tmp_path / "run", steps=100000).replace(
        "save_every = 3", "save_every = 1000"))
    proc = start([sys.executable, "-m", "lm.cli", "train", "--config", str(cfg)], tmp_path)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 4):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    assert "checkpoint saved" in out and "--resume" in out
    step = latest_step(tmp_path / "run")
    assert step >= 4  # saved at the interruption, not at a periodic save
    load_checkpoint(resolve_checkpoint_dir(tmp_path / "run", prefer_best=False))


def test_full_disk_during_save_keeps_previous_checkpoint(small_corpus: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = run_config_from_dict({
        "data": {"train": [str(small_corpus)], "valid_fraction": 0.1},
        "model": {"family": "transformer", "block_size": 16, "n_layer": 1, "n_head": 1, "n_embd": 8},
        "train": {"out_dir": str(tmp_path), "batch_size": 4, "seq_len": 16, "max_steps": 6, "eval_every": 3,
                  "progress": False, "precision": "fp32"},
    })
    trainer = Trainer(cfg)
    trainer.fit(until_step=3)
    before = weights(tmp_path / "step-00000003")
    import lm.checkpoint

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lm.checkpoint, "save_model", no_space)
    resumed = Trainer(cfg, resume=True)
    with pytest.raises(TrainingError, match=r"No space left on device; the previous (best/ )?(checkpoint step-00000003 )?is intact"):
        resumed.fit()
    monkeypatch.undo()
    after = weights(resolve_checkpoint_dir(tmp_path, prefer_best=False))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not list(tmp_path.glob(".*.tmp-*"))
    assert train(cfg, resume=True).steps == 6
