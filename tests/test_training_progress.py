"""The training progress line: ETA from the first step under a time budget, log lines that do
not glue onto the bar, the postfix's figures, and the metrics records it makes."""

from __future__ import annotations

import contextlib
import logging
import sys

import numpy as np
import pytest
import torch

from lm.models import RNNConfig, build_model
from lm.training.evaluation import mean_loss
from lm.training.progress import ProgressLine


def _line(**kw: object) -> ProgressLine:
    options = {"max_steps": 100_000, "start_step": 0, "max_time": 0.0, "threads": 3, "enabled": False}
    return ProgressLine(**{**options, **kw})  # type: ignore[arg-type]


def test_a_time_budget_sizes_the_bar_from_the_first_step() -> None:
    line = _line(max_time=60.0)
    line.step(1, 2.0, 100, elapsed=0.5)  # 0.5 s a step: 120 steps fit in 60 s
    assert line.bar.total == 120
    line.step(2, 2.0, 100, elapsed=2.0)  # slower now: 60 steps fit
    assert line.bar.total == 60
    line.close()


def test_without_a_time_budget_the_bar_is_max_steps_and_never_shorter_than_done() -> None:
    line = _line()
    line.step(1, 2.0, 100, elapsed=10.0)
    assert line.bar.total == 100_000
    fast = _line(max_time=1.0, max_steps=50)
    fast.step(1, 2.0, 100, elapsed=0.001)  # the step budget ends first
    assert fast.bar.total == 50
    fast.close()
    line.close()


def test_report_averages_the_window_and_skipped_steps_make_no_record() -> None:
    line = _line()
    assert line.report(1, 1e-3, 1.0) is None
    line.step(1, 2.0, 100, 0.1)
    line.step(2, None, 100, 0.2)  # skipped: no loss, no tokens
    line.step(3, 4.0, 100, 0.3)
    rec = line.report(3, 1e-3, 0.3)
    assert rec is not None and rec["step"] == 3 and rec["loss"] == 3.0 and rec["lr"] == 1e-3
    assert rec["tokens_per_s"] > 0 and rec["elapsed_s"] == 0.3
    assert line.report(4, 1e-3, 0.4) is None  # the window restarts
    line.close()


def test_the_bar_shows_threads_and_log_records_go_through_tqdm() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    root.addHandler(handler)
    try:
        line = _line(enabled=True, threads=2)
        assert handler not in root.handlers, "a stderr handler would write over the bar"
        assert any(type(h).__name__ == "_TqdmLoggingHandler" for h in root.handlers)
        line.step(1, 2.0, 100, 0.1)
        line.report(1, 1e-3, 0.1)
        assert "threads=2" in str(line.bar)
        line.close()
        assert handler in root.handlers  # restored when the line closes
    finally:
        root.removeHandler(handler)


@pytest.mark.parametrize("progress", [False, True])
def test_mean_loss_is_the_same_with_or_without_its_progress_bar(progress: bool) -> None:
    torch.manual_seed(0)
    model = build_model(RNNConfig(vocab_size=11, n_embd=8, n_hidden=8, n_layer=1))
    tokens = np.random.default_rng(0).integers(0, 11, 400).astype(np.uint16)
    common = {"batch_size": 4, "seq_len": 8, "device": torch.device("cpu"), "carry_state": True}
    quiet = mean_loss(model, tokens, autocast=contextlib.nullcontext, **common)
    shown = mean_loss(model, tokens, autocast=contextlib.nullcontext, progress=progress, **common)
    assert quiet == shown and 1.5 < quiet < 4.0
