"""Optimizer construction and the learning-rate schedule (pure functions of config and step)."""

from __future__ import annotations

import math

import torch
from torch import nn

from lm.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: biases, norm gains and embeddings (tied or not) are spared."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embedding_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class MuonAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` for the hidden matrices and AdamW for the rest, as one optimizer:
    the trainer sets one learning rate on all groups, the grad scaler steps it, and its state
    saves and loads keyed by parameter name like any other. The two share this object's
    ``param_groups`` dicts and ``state`` (their parameters are disjoint)."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__([*adamw.param_groups, *muon.param_groups], {})  # the same dicts, not copies
        self._share()

    def _share(self) -> None:
        n = len(self.adamw.param_groups)
        self.adamw.param_groups, self.muon.param_groups = self.param_groups[:n], self.param_groups[n:]
        self.adamw.state = self.muon.state = self.state

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 -- torch.optim.Optimizer's signature
        loss = None if closure is None else closure()
        self.adamw.step()
        self.muon.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # replaces the group dicts and the state: share again
        self._share()


def muon_params(model: nn.Module) -> set[int]:
    """The hidden matrices Muon orthogonalises: every 2-D parameter but the embeddings and the
    output layer (tied or not), which AdamW keeps (Muon's authors' split)."""
    outside = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "output_layer", None)
    if head is not None:
        outside.add(id(head.weight))
    return {id(p) for p in model.parameters() if p.requires_grad and p.dim() == 2 and id(p) not in outside}


def build_optimizer(model: nn.Module, cfg: TrainConfig, *, fused: bool = True) -> torch.optim.Optimizer:
    """AdamW (fused kernel where available; ``fused=False`` for sharded DTensor parameters), SGD
    (also for ``asgd``, whose averaging is ``lm.training.averaging``'s) or Muon with AdamW."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer in ("sgd", "asgd"):
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    fused = fused and next(model.parameters()).device.type in ("cuda", "cpu")
    if cfg.optimizer == "muon":
        chosen = muon_params(model)
        matrices = [p for g in groups for p in g["params"] if id(p) in chosen]
        rest = [{**g, "params": [p for p in g["params"] if id(p) not in chosen]} for g in groups]
        muon = torch.optim.Muon(matrices, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                                adjust_lr_fn="match_rms_adamw")
        adamw = torch.optim.AdamW([g for g in rest if g["params"]], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  fused=fused)
        return MuonAdamW(muon, adamw)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def scheduled_lr(cfg: TrainConfig, step: int, progress: float, plateau_scale: float = 1.0,
                 decay_start: float = 0.0) -> float:
    """Warmup then decay. ``progress`` in [0, 1] is how far the run is (steps or wall time);
    ``decay_start`` is the progress at which warm-up ended, so decay starts at the peak rate and
    reaches ``min_lr`` at the end of the run."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "plateau":
        return cfg.lr * plateau_scale
    span = 1.0 - decay_start
    progress = (progress - decay_start) / span if span > 0 else 1.0
    progress = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "linear":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1.0 - progress)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))
