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


def build_optimizer(model: nn.Module, cfg: TrainConfig, *, fused: bool = True) -> torch.optim.Optimizer:
    """AdamW (fused kernel where available; ``fused=False`` for sharded DTensor parameters) or SGD."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    fused = fused and next(model.parameters()).device.type in ("cuda", "cpu")
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
