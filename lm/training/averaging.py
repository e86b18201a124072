"""Weight averaging: the evaluated and saved weights as an average of the training iterates.

Two schedules, on ``torch.optim.swa_utils.AveragedModel``:

* ``train.ema`` (a decay such as 0.999): an exponential moving average from the first step,
  the speedruns' and nanoGPT-forks' EMA of weights;
* ``train.optimizer = "asgd"``: SGD whose iterates are averaged uniformly from the evaluation at
  which validation has not improved for ``train.asgd_nonmono`` evaluations on (non-monotonically
  triggered averaged SGD, NT-ASGD: Merity et al. 2018, the optimizer of AWD-LSTM).

Training continues on the raw weights (and resumable checkpoints keep them, with the average
beside in the trainer state); validation, samples and ``best/`` use the average once it exists.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lm.config import TrainConfig


class WeightAverage:
    """The average of ``model``'s iterates that ``cfg`` asks for, or none (``enabled`` False)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig) -> None:
        self.model = model
        self.ema = cfg.ema
        self.nonmono = cfg.asgd_nonmono if cfg.optimizer == "asgd" else 0
        self.averaged: AveragedModel | None = self._new() if self.ema else None

    @property
    def enabled(self) -> bool:
        return bool(self.ema or self.nonmono)

    def _new(self) -> AveragedModel:
        fn = get_ema_multi_avg_fn(self.ema) if self.ema else None  # None: the uniform running mean
        return AveragedModel(self.model, multi_avg_fn=fn)

    def update(self) -> None:
        """After an optimizer step: fold the new weights into the average (if averaging)."""
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)

    def after_eval(self, evals_since_best: int) -> bool:
        """NT-ASGD's trigger: start the uniform average once validation has not improved for
        ``asgd_nonmono`` evaluations. True when averaging started now."""
        if self.nonmono and self.averaged is None and evals_since_best >= self.nonmono:
            self.averaged = self._new()
            self.averaged.update_parameters(self.model)
            return True
        return False

    def model_for_eval(self) -> nn.Module:
        """What validation, samples and ``best/`` use: the average once it exists, else the model."""
        return self.model if self.averaged is None else self.averaged.module

    def weights(self) -> dict[str, torch.Tensor] | None:
        """The averaged weights to save in place of the model's (None: the model's own)."""
        return None if self.averaged is None else self.averaged.module.state_dict()

    def to_state(self) -> dict[str, Any] | None:
        """For the resumable checkpoint's trainer state (None when there is no average yet)."""
        return None if self.averaged is None else self.averaged.state_dict()

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Restore ``to_state``'s average on ``--resume``."""
        if state is None:
            return
        if self.averaged is None:
            self.averaged = self._new()
        self.averaged.load_state_dict(state)
