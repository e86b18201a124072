"""The training progress line: a tqdm bar whose postfix carries the loss, learning rate,
tokens/s and thread count, and whose length (hence ETA) follows whichever budget ends the run
first, ``max_steps`` or ``max_time``, from the first step on. Log records written while it is
open go through tqdm, so they print on their own lines instead of gluing onto the bar. The
metrics records (``metrics.jsonl``) are made here too, from the same window of steps."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any


class ProgressLine:
    """Counts steps, tokens and losses between reports; ``report`` turns a window into a
    metrics record and refreshes the bar."""

    def __init__(
        self, *, max_steps: int, start_step: int, max_time: float, threads: int, enabled: bool
    ) -> None:
        from tqdm.auto import tqdm

        self.max_steps = max_steps
        self.max_time = max_time
        self.threads = threads
        self.bar = tqdm(total=max_steps, initial=start_step, disable=not enabled,
                        dynamic_ncols=True, desc="train")
        self._redirect = contextlib.ExitStack()
        if enabled:
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect.enter_context(logging_redirect_tqdm([logging.getLogger()]))
        self._losses: list[float] = []
        self._tokens = 0
        self._window_start = time.perf_counter()

    def step(self, step: int, loss: float | None, tokens: int, elapsed: float) -> None:
        """One optimizer step done (``loss`` None when it was skipped)."""
        if loss is not None:
            self._losses.append(loss)
            self._tokens += tokens
        if self.max_time and elapsed > 0:
            # The run ends at whichever budget runs out first: size the bar to it every step,
            # so tqdm's ETA is the time budget's from the start, not max_steps' (hours).
            by_time = step * self.max_time / elapsed
            self.bar.total = max(step, min(self.max_steps, round(by_time)))
        self.bar.update(1)

    def report(self, step: int, lr: float, elapsed: float) -> dict[str, Any] | None:
        """The metrics record for the steps since the last report (None if all were skipped)."""
        if not self._losses:
            return None
        now = time.perf_counter()
        tps = self._tokens / max(now - self._window_start, 1e-9)
        mean = sum(self._losses) / len(self._losses)
        self.bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{math.exp(min(mean, 50)):.1f}",
                             lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}", threads=self.threads)
        self._losses, self._tokens, self._window_start = [], 0, now
        return {"step": step, "loss": round(mean, 5), "lr": lr, "tokens_per_s": round(tps, 1),
                "elapsed_s": round(elapsed, 2)}

    def close(self) -> None:
        self.bar.close()
        self._redirect.close()
