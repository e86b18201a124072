"""Weight-only int8 for serving and generation (``--dtype int8``).

Each ``nn.Linear`` of a loaded model (the output layer included; embeddings, norms and recurrent
cells stay as they are) keeps its weight as int8 with one fp32 scale per output channel
(symmetric: ``scale = max|w_row| / 127``), a quarter of fp32's bytes. A decode step at batch 1 is
bound by streaming the weights, so fewer bytes is fewer microseconds.

The product is PyTorch's own weight-only int8 kernel, ``torch.ops.aten._weight_int8pack_mm``
(what torchao's int8 weight-only path calls on CPU), fed bf16 activations: on this machine its
fp32-activation path is 5-15x slower than an fp32 ``F.linear``, its bf16 one 1.5-9x faster at
one row (1152x384: 22 vs 77 us; 50,257x768: 1.3 vs 11.6 ms). The output returns in the
caller's dtype. Where that kernel is missing or refuses (another device, a PyTorch that changed
it), the layer multiplies by its dequantized weight instead: slower, the same numbers.

Checkpoints stay fp32/bf16 on disk, quantized at load, unless ``lmforge export --dtype int8``
writes the quantized layers themselves (``weight_int8`` and ``scale`` per layer, ``quantization:
"int8"`` in ``config.json``): a quarter of the linear weights' bytes, loaded as they are.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

COMPUTE_DTYPE = torch.bfloat16
"""The activations' dtype inside the int8 kernel (its fast path on CPU)."""
K_MULTIPLE = 16
"""The kernel's input width must be a multiple of this: at 100 or 300 inputs (the shipped PTB
LSTM's output layer) torch 2.13's CPU kernel crashes the process. Such a layer stays as it was."""


def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``(int8 weight, fp32 scale per row)`` with ``weight ~= q * scale[:, None]``."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale


@functools.cache
def kernel_works(device_type: str) -> bool:
    """The int8 kernel runs on ``device_type`` and agrees with the dequantized product."""
    try:
        g = torch.Generator().manual_seed(0)
        w, x = torch.randn(16, 32, generator=g), torch.randn(3, 32, generator=g)
        q, scale = quantize_rows(w)
        q, scale, x = q.to(device_type), scale.to(device_type), x.to(device_type)
        got = torch.ops.aten._weight_int8pack_mm(x.to(COMPUTE_DTYPE), q, scale.to(COMPUTE_DTYPE)).float()
        want = F.linear(x.to(COMPUTE_DTYPE).float(), q.float() * scale[:, None])
        ok = bool(torch.allclose(got, want, atol=0.05, rtol=0.02))
    except (RuntimeError, NotImplementedError, AttributeError) as exc:
        log.warning("int8 kernel unavailable on %s (%s): int8 layers multiply dequantized weights", device_type, exc)
        return False
    if not ok:
        log.warning("int8 kernel disagrees on %s: int8 layers multiply dequantized weights", device_type)
    return ok


class Int8Linear(nn.Module):
    """A linear layer with an int8 weight and per-output-channel scales (inference only)."""

    def __init__(self, linear: nn.Linear, *, quantize: bool = True) -> None:
        """``linear``'s weight quantized; with ``quantize=False`` only its shapes, for a
        checkpoint's int8 tensors to be loaded into (``lm.checkpoint``)."""
        super().__init__()
        if linear.in_features % K_MULTIPLE:
            raise ValueError(f"the int8 kernel takes multiples of {K_MULTIPLE} inputs, not {linear.in_features}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        device = linear.weight.device
        if quantize:
            q, scale = quantize_rows(linear.weight)
        else:
            q = torch.zeros(linear.weight.shape, dtype=torch.int8, device=device)
            scale = torch.ones(self.out_features, device=device)
        self.register_buffer("weight_int8", q.to(device))
        self.register_buffer("scale", scale.to(device))
        self.register_buffer("scale_compute", self.scale.to(COMPUTE_DTYPE))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features)
        if kernel_works(x.device.type):
            y = torch.ops.aten._weight_int8pack_mm(flat.to(COMPUTE_DTYPE).contiguous(), self.weight_int8,
                                                   self.scale_compute)
        else:
            y = F.linear(flat, (self.weight_int8.to(x.dtype) * self.scale[:, None].to(x.dtype)))
        # the bias added while the kernel's output is promoted to x's dtype: one pass
        y = y.to(x.dtype) if self.bias is None else torch.add(self.bias.to(x.dtype), y).to(x.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's signature
        super()._apply(fn, recurse)
        # A cast of the model (.to(bf16), .float()) must not reach the quantization: the scales
        # stay fp32 and the kernel's copy of them in its compute dtype (moves still apply).
        self.scale = self.scale.float()
        self.scale_compute = self.scale.to(COMPUTE_DTYPE)
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: nn.Module, *, quantize: bool = True) -> nn.Module:
    """``model`` (in place, eval mode) with every ``nn.Linear`` an ``Int8Linear`` (those whose
    input width the kernel cannot take excepted: ``K_MULTIPLE``). A tied output layer gets an
    int8 copy of its own; the embedding it shared stays full precision. ``quantize=False``
    builds the layers' shapes only, for an int8 checkpoint's tensors to fill."""
    kept = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                if child.in_features % K_MULTIPLE:
                    kept.append(f"{name} ({child.in_features} inputs)")
                    continue
                setattr(parent, name, Int8Linear(child, quantize=quantize))
    if kept:
        log.info("int8: kept %s in full precision (the int8 kernel takes multiples of %d inputs)",
                 ", ".join(kept), K_MULTIPLE)
    return model.eval()


QUANTIZATION = "int8"
"""``config.json``'s ``quantization`` for a checkpoint holding ``Int8Linear`` layers."""


def is_int8(model: nn.Module) -> bool:
    """Whether ``model``'s linear layers were quantized by ``quantize_int8``."""
    return any(isinstance(m, Int8Linear) for m in model.modules())
