"""A training run's checkpoints, from the trainer's side: writing the resumable step checkpoint
(then repointing ``latest`` and pruning older ones) and ``best/``, and restoring the weights,
optimizer and carried recurrent state when a run resumes. Write failures are one
``TrainingError`` that says what on disk is still good."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lm.chat_template import ChatTemplate
from lm.checkpoint import LATEST_FILE, load_weights_into, save_checkpoint
from lm.context import TextContext
from lm.example import Example
from lm.models import RNNState, build_model
from lm.models.config import ModelConfig
from lm.training.distributed import DistInfo, load_full_model_state, load_full_optimizer_state
from lm.training.errors import TrainingError
from tokenizer import Tokenizer
from tokenizer.io import write_atomic


@dataclass(frozen=True)
class RunCheckpoint:
    """What every checkpoint of a run holds besides its step's weights: the model (or, sharded,
    its structure), the tokenizer, the text context and the example."""

    run_dir: Path
    model: nn.Module
    tokenizer: Tokenizer
    context: TextContext
    example: Example | None = None
    chat_template: ChatTemplate | None = None
    """A fine-tuned model's, carried from the checkpoint it started from (``lm.training.finetune``)."""

    def write(self, name: str, step: int, *, training: dict[str, Any], weights: dict[str, torch.Tensor] | None,
              trainer_state: dict[str, Any] | None = None) -> Path:
        """Write ``run_dir/name`` (replacing it atomically); a failure is a ``TrainingError``
        that says what on disk is still good."""
        try:
            return save_checkpoint(self.run_dir / name, self.model, self.tokenizer, training=training,
                                   trainer_state=trainer_state, state_dict=weights, context=self.context,
                                   example=self.example, chat_template=self.chat_template)
        except OSError as exc:
            raise TrainingError(f"could not save the checkpoint for step {step} to {self.run_dir / name}: "
                                f"{exc.strerror or exc}; {self._intact(name)}") from None

    def _intact(self, name: str) -> str:
        if name == "best":
            return "the previous best/ is intact"
        latest = self.run_dir / LATEST_FILE
        previous = latest.read_text().strip() if latest.is_file() else None
        return f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"

    def write_step(self, step: int, *, training: dict[str, Any], weights: dict[str, torch.Tensor] | None,
                   trainer_state: dict[str, Any]) -> Path:
        """Write the resumable ``step-NNNNNNNN/``, point ``latest`` at it, drop older ones."""
        name = f"step-{step:08d}"
        path = self.write(name, step, training=training, weights=weights, trainer_state=trainer_state)
        try:
            write_atomic(self.run_dir / LATEST_FILE, name + "\n")
        except OSError as exc:
            raise TrainingError(f"could not point {self.run_dir / LATEST_FILE} at {name}: {exc.strerror or exc}; "
                                f"{self._intact(name)}") from None
        for old in self.run_dir.glob("step-*"):
            if old.name != name and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        return path


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The random generators' states a resumed run needs to draw what this one would have."""
    state = {"rng_torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Undo ``rng_state`` (a CUDA state is skipped when resuming on another device type)."""
    torch.set_rng_state(state["rng_torch"])
    if "rng_cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["rng_cuda"], device)


def load_weights(model: nn.Module, config: ModelConfig, directory: Path, *, sharded: bool) -> None:
    """Load a checkpoint's weights into the (possibly FSDP-sharded) training model."""
    if not sharded:
        load_weights_into(model, directory)
        return
    full = build_model(config)  # resolves tied weights, then shards into place
    load_weights_into(full, directory)
    load_full_model_state(model, full.state_dict())


def restore_optimizer(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    saved: dict[str, Any],
    *,
    sharded: bool,
    directory: Path,
) -> None:
    """Load a saved optimizer state: keyed by parameter name and unsharded (any world size,
    with or without FSDP), or the older positional form."""
    for group, mine in zip(saved["param_groups"], optimizer.param_groups, strict=True):
        # the kernel choice is this run's (sharded parameters cannot use fused), before loading
        group.update({k: mine[k] for k in ("fused", "foreach") if k in mine})
    if not any(isinstance(v, torch.Tensor) for per in saved["state"].values() for v in per.values()):
        return  # a stateless optimizer (SGD without momentum) has nothing to restore; torch's loader would refuse
    if all(isinstance(i, int) for g in saved["param_groups"] for i in g["params"]):
        # written before optimizer states were keyed by parameter name
        if sharded:
            raise TrainingError(f"{directory}: this checkpoint's optimizer state predates FSDP support; "
                                "resume it once without train.fsdp, then with it")
        optimizer.load_state_dict(saved)
    else:
        load_full_optimizer_state(model, optimizer, saved)


def rank_rnn_state(
    saved: dict[str, torch.Tensor], batch_size: int, dist: DistInfo, device: torch.device
) -> RNNState:
    """This rank's rows of the carried recurrent state saved for the whole global batch."""
    per = batch_size // dist.world_size
    rows = torch.arange(dist.rank * per, (dist.rank + 1) * per, device=device)
    c = saved.get("c")
    state = RNNState(saved["h"].to(device), None if c is None else c.to(device))
    return state.select(rows)
