"""Inference-only preparation of a model: eval mode and faster CPU matrix products.

Decoding multiplies a handful of rows (1 for greedy, 4 for beam 4, the batch for batched
prompts) by every weight matrix, once per step. On CPU PyTorch sends fp32 products to MKL,
which at 2-32 rows runs 3-4x below what oneDNN reaches with its weights reordered once, ahead of
time, into its own blocked layout (``bench/linear.py``: the 36 matrices of a 6x6x384
Transformer plus its 10,000-word output layer take 8.0 ms at 8 rows through MKL and 2.8 ms
through prepacked oneDNN; bf16 4.5 ms and 2.3 ms). ``PackedLinear`` keeps that reordered copy
beside the ordinary weight and uses it whenever no gradient is wanted. The one case where MKL
stays ahead is a single fp32 row times a small matrix that sits in cache (its matrix-vector
kernel has less fixed cost per call) or when PyTorch runs on one thread (MKL's kernel is then
as fast as oneDNN's and has less fixed cost; oneDNN gains by splitting a large matrix across
threads), so a single fp32 row goes to MKL for matrices up to ``GEMV_MAX_BYTES`` or on one
thread, with the weight stored column-major, which suits that kernel.

This is PyTorch's own machinery (``torch.ops.mkldnn._reorder_linear_weight`` and
``_linear_pointwise``, what ``torch.compile`` emits for a frozen CPU model), used eagerly. Where
oneDNN is absent, or on another device, ``prepare_for_inference`` leaves the layers as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GEMV_MAX_BYTES = 1 << 20
"""A single fp32 row times a weight of at most this many bytes goes to MKL's matrix-vector
kernel: measured faster there for matrices that stay in cache (``bench/linear.py --rows 1``)."""

WIDE = 8
"""A single fp32 row times a matrix with at least this many times more outputs than inputs (an
output layer) also goes to MKL, whose matrix-vector kernel streams such a matrix well."""

PACK_BATCH_HINT = 8
"""Rows the reordered layout is tuned for (oneDNN picks its blocking for this many); it serves
every row count."""


def packing_supported(weight: Tensor) -> bool:
    """True when oneDNN can take ``weight``'s products here: CPU, oneDNN built in, and fp32 or
    bf16 (bf16 only where the CPU has native bf16 instructions)."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if weight.dtype == torch.float32:
        return True
    return weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` that, for inference on CPU, multiplies by a copy of its weight reordered
    into oneDNN's blocked layout.

    It shares the original ``weight`` and ``bias`` parameters (a tied output layer stays tied,
    ``state_dict`` is unchanged) and falls back to ``F.linear`` whenever the fast path does not
    apply: gradients wanted, autocast on, another dtype or device. The reordered copy is rebuilt
    when the weight changes in place (its version counter moves) or the module is moved or cast.
    """

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self._packed: Tensor | None = None
        self._packed_version = -1
        self._gemv_small = False
        self.repack()

    def repack(self) -> None:
        """(Re)build the reordered copy of the weight from its current values."""
        weight = self.weight.detach()
        if not packing_supported(weight):
            self._packed = None
            return
        with torch.no_grad():
            self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), PACK_BATCH_HINT)
        self._packed_version = _version(weight)
        out_features, in_features = weight.shape
        self._gemv_small = weight.dtype == torch.float32 and (
            weight.numel() * weight.element_size() <= GEMV_MAX_BYTES or out_features >= WIDE * in_features
        )

    def forward(self, x: Tensor) -> Tensor:
        packed = self._packed
        if (
            packed is None
            or x.dtype != packed.dtype
            or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
            or torch.is_autocast_enabled("cpu")
            or (x.numel() == x.shape[-1] and self._single_row_gemv())
        ):
            return F.linear(x, self.weight, self.bias)
        if _version(self.weight) != self._packed_version:  # changed in place since packing
            self.repack()
            packed = self._packed
            if packed is None:
                return F.linear(x, self.weight, self.bias)
        return packed_linear(x, packed, self.bias)

    def _single_row_gemv(self) -> bool:
        """Whether one fp32 row goes to MKL's matrix-vector kernel rather than oneDNN."""
        return self._packed.dtype == torch.float32 and (self._gemv_small or torch.get_num_threads() == 1)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's signature
        super()._apply(fn, recurse)
        self.repack()  # moved or cast: the reordered copy must follow
        return self

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, packed={self._packed is not None}"


def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ W.T + bias`` with ``W`` reordered by ``torch.ops.mkldnn._reorder_linear_weight``."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _version(t: Tensor) -> int:
    """``t``'s in-place modification counter (inference tensors have none and never change)."""
    return -2 if t.is_inference() else t._version


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode with its ``nn.Linear`` layers ready for fast inference.

    On CPU each fp32/bf16 ``nn.Linear`` becomes a ``PackedLinear`` (see the module docstring);
    fp32 weights are also stored column-major for the single-row MKL path (``F.linear(x, W)``
    multiplies by ``W.T``, a plain GEMM when ``W`` is the transpose of a contiguous ``[in, out]``
    matrix; shape and values are unchanged, only strides). Elsewhere (CUDA, MPS) fp32 and
    half-precision weights are stored column-major, as before. For inference only: safetensors
    refuses non-contiguous tensors, so save a model before preparing it, not after.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.weight.is_contiguous() and (
                module.weight.dtype == torch.float32 or module.weight.device.type != "cpu"
            ):
                module.weight.data = module.weight.data.t().contiguous().t()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and packing_supported(child.weight):
                setattr(parent, name, PackedLinear(child))
    return model.eval()
