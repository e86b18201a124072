"""torchrun integration: process group from the environment (gloo on CPU, NCCL on CUDA), and FSDP."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

SHUTDOWN_WAIT_S = 120
"""How long a finished rank waits for the others before leaving the process group."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # ranks on this machine, which share its cores

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (no-op otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return DistInfo(rank=dist.get_rank(), local_rank=local, world_size=dist.get_world_size(),
                    local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def shutdown_distributed(wait: bool = True) -> None:
    """Leave the process group. ``wait``: first meet every rank at a barrier, so no rank tears
    its group down while a peer still talks to it (skipped after an error, where a peer may
    never arrive). Collects garbage first: a model's hold on a gloo group that outlives
    ``destroy_process_group`` leaves the group to interpreter exit, where its worker threads
    can abort the process ("terminate called without an active exception")."""
    if not dist.is_initialized():
        return
    gc.collect()
    if wait:
        try:  # bounded: a peer that failed alone never arrives
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=timedelta(seconds=SHUTDOWN_WAIT_S))
            else:
                dist.barrier()
        except RuntimeError as exc:
            log.warning("leaving the process group without every rank: %s", exc)
    dist.destroy_process_group()


# ------------------------------------------------------------------------------------- FSDP
# Fully sharded data parallelism (PyTorch's FSDP2, ``fully_shard``): each rank holds 1/world of
# every parameter, gradient and optimizer state, and gathers a block's weights only while that
# block runs. It is for Transformers too large to replicate on one device; the blocks are the
# natural unit (one all-gather per block, overlapped with the previous block's compute).


def shard_transformer(model: nn.Module) -> None:
    """Shard ``model`` in place: one FSDP unit per Transformer block, then the rest (embeddings, head)."""
    from torch.distributed.fsdp import fully_shard

    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"FSDP sharding expects a Transformer with .blocks, got {type(model).__name__}")
    for block in blocks:
        fully_shard(block)
    fully_shard(model)


def wrap_for_training(
    model: nn.Module, fsdp: bool, precision: str, info: DistInfo, device: torch.device
) -> tuple[bool, nn.Module]:
    """Prepare ``model`` for this process group, before the optimizer sees its parameters:
    shard a Transformer in place (``fsdp``), or wrap it in DDP, or leave it alone on one
    process. Returns whether it is sharded and the module the training step calls."""
    from lm.models import RNNLM
    from lm.training.errors import TrainingError

    if fsdp and isinstance(model, RNNLM):
        raise TrainingError("train.fsdp shards Transformers; an RNN LM trains with DDP (set train.fsdp = false)")
    if fsdp and precision == "fp16":
        raise TrainingError("train.fsdp with fp16 is not supported (its loss scaling is per rank); use bf16")
    if fsdp and not info.enabled:
        log.info("train.fsdp: one process, nothing to shard; training unsharded")
    if fsdp and info.enabled:
        shard_transformer(model)
        return True, model
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        return False, nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return False, model


def gradient_sync(
    model: nn.Module, train_model: nn.Module, info: DistInfo, sharded: bool, sync: bool
) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce / reduce-scatter on all but the last accumulation step."""
    if sync or not info.enabled:
        if sharded:
            model.set_requires_gradient_sync(True)  # type: ignore[operator]
        return contextlib.nullcontext()
    if sharded:
        model.set_requires_gradient_sync(False)  # type: ignore[operator]
        return contextlib.nullcontext()
    return train_model.no_sync()  # type: ignore[operator]


def _full_options(**kw: bool):  # noqa: ANN202
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on CPU, on rank 0 (empty elsewhere). Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options(cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, unsharded, on rank 0. Collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load unsharded weights (present on every rank) into a sharded or plain model."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_full_options())


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a name-keyed optimizer state (present on every rank) into a sharded or plain model's optimizer."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_full_options())


def agree(info: DistInfo, device: torch.device, value: float) -> float:
    """Rank 0's ``value`` on every rank (decisions that lead into collectives must match)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def agree_stop(info: DistInfo, device: torch.device, signalled: bool, elapsed: float) -> tuple[bool, float]:
    """Whether any rank was signalled, and the slowest rank's elapsed time, on every rank: so
    every rank stops at the same step when a signal comes or a time budget runs out."""
    if not info.enabled:
        return signalled, elapsed
    t = torch.tensor([1.0 if signalled else 0.0, elapsed], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t[0].item()), float(t[1].item())


def gathered_rnn_state(state: Any, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """Every rank's carried recurrent state (``RNNState``), joined along the batch on CPU in
    fp32 for the checkpoint; collective, so every rank calls it."""
    if state is None:
        return None
    h, c = state.h, state.c
    if info.enabled:
        parts = [torch.empty_like(h) for _ in range(info.world_size)]
        dist.all_gather(parts, h.contiguous())
        h = torch.cat(parts, dim=1)
        if c is not None:
            parts = [torch.empty_like(c) for _ in range(info.world_size)]
            dist.all_gather(parts, c.contiguous())
            c = torch.cat(parts, dim=1)
    out = {"h": h.float().cpu()}
    if c is not None:
        out["c"] = c.float().cpu()
    return out
