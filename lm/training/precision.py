"""Training precision: which one ``auto`` means on this device, and the autocast it runs under."""

from __future__ import annotations

import contextlib

import torch

from lm.inference import bf16_native
from lm.training.errors import TrainingError


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the hardware has fast bf16 (CUDA, CPUs with AVX512-BF16/AMX), else fp32."""
    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            raise TrainingError("train.precision fp16 needs CUDA; use bf16 or fp32 on this device")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and bf16_native():
        return "bf16"
    return "fp32"


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
