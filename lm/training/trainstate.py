"""What a training run counts, saved in every resumable checkpoint and restored on ``--resume``.

One dataclass instead of fields written and read one by one: adding a counter is adding a field,
and its save and restore come with it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainProgress:
    """The trainer's counters (the optimizer, scaler, RNG and recurrent state are saved beside)."""

    step: int = 0
    tokens_seen: int = 0
    elapsed: float = 0.0
    """Seconds of training (evaluation and saving excluded); what ``train.max_time`` budgets."""
    best_val: float = math.inf
    last_val: float = math.inf
    evals_since_best: int = 0
    plateau_scale: float = 1.0
    decay_start: float | None = None
    """Run progress when warm-up ended: decay schedules run from there (peak) to the end."""
    skipped: int = 0
    """Steps skipped for a non-finite loss (``train.on_nan = "skip"``)."""

    def fraction(self, max_steps: int, max_time: float) -> float:
        """How far through its budget the run is: steps, or time when ``max_time`` runs out first."""
        done = self.step / max_steps
        return max(done, self.elapsed / max_time) if max_time else done

    def meta(self, **extra: Any) -> dict[str, Any]:
        """What a checkpoint's ``training`` block records of the run so far, with ``extra``."""
        return {"step": self.step, "tokens_seen": self.tokens_seen, "elapsed_s": round(self.elapsed, 2),
                "best_val_loss": self.best_val, "val_loss": self.last_val, **extra}

    def finished(self, max_steps: int, max_time: float) -> bool:
        return self.step >= max_steps or bool(max_time and self.elapsed >= max_time)

    def spent(self, max_steps: int, max_time: float) -> tuple[str, str]:
        """For a finished run: which budget ended it, and the ``--set`` that would extend it."""
        if self.step >= max_steps:
            return f"step {self.step} of train.max_steps = {max_steps}", f"train.max_steps={max_steps * 2}"
        return f"{self.elapsed:.0f} s of train.max_time = {max_time:g} s", f"train.max_time={max_time * 2:g}"

    def to_state(self) -> dict[str, Any]:
        """The counters as checkpoint fields (``decay_start`` -1.0 while warming up: torch's
        weights-only loader keeps plain numbers)."""
        state = dataclasses.asdict(self)
        state["decay_start"] = -1.0 if self.decay_start is None else self.decay_start
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any], *, warmup_steps: int, max_steps: int) -> TrainProgress:
        """The counters a checkpoint saved; ``decay_start`` derived for checkpoints written
        before warm-up was accounted for."""
        progress = cls(**{f.name: type(f.default)(state[f.name]) for f in dataclasses.fields(cls)
                          if f.name != "decay_start"})
        if "decay_start" in state:
            saved = float(state["decay_start"])
            progress.decay_start = None if saved < 0 else saved
        elif progress.step >= warmup_steps:
            progress.decay_start = min(1.0, warmup_steps / max_steps)
        return progress


@dataclass
class TrainResult:
    """What ``fit`` returns: where the run is, how far it got, its losses and its history."""

    run_dir: Path
    steps: int
    tokens_seen: int
    elapsed: float
    best_val_loss: float
    last_val_loss: float
    test_loss: float | None = None
    skipped_steps: int = 0
    interrupted: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
