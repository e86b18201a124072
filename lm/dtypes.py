"""Weight precisions by the names users give them (``--dtype``, ``lmforge serve --dtype``).

One table for the CLI, the pipeline, export and the server settings. Importing it does not
import torch (``lmforge --help`` stays fast); ``torch_dtype`` does, when it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import torch

WeightDtype = Literal["fp32", "bf16", "fp16"]
WEIGHT_DTYPES: tuple[str, ...] = get_args(WeightDtype)
RuntimeDtype = Literal["fp32", "bf16", "fp16", "int8"]
"""What a loaded model may run in: the weight precisions, or ``int8`` (weight-only int8 linear
layers, quantized at load: ``lm.quantize``; checkpoints on disk stay fp32/bf16)."""
RUNTIME_DTYPES: tuple[str, ...] = get_args(RuntimeDtype)
_TORCH_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a weight-precision name; ValueError naming the valid ones."""
    if name not in _TORCH_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {name!r}")
    import torch

    return getattr(torch, _TORCH_NAMES[name])
