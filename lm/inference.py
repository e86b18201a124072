"""Inference-only preparation of a model: eval mode and faster CPU matrix products.

Decoding multiplies a handful of rows (1 for greedy, 4 for beam 4, the batch for batched
prompts) by every weight matrix, once per step. On CPU PyTorch sends fp32 products to MKL,
which at 2-32 rows runs 2-3x below what oneDNN reaches with its weights reordered once, ahead
of time, into its own blocked layout (``bench/linear.py``: the 24 block matrices of a 6x6x384
Transformer plus its 10,000-word output layer take 6.6-7.5 ms at 8 rows through MKL and
2.7-3.6 ms through prepacked oneDNN; bf16 2.6-3.1 ms and 1.5-2.2 ms, over this session's runs).
``PackedLinear`` keeps that reordered copy beside the ordinary weight and uses it whenever no
gradient is wanted; small fp32 matrices, where oneDNN's fixed cost per call outweighs the gain,
are left alone (``PACK_MIN_BYTES``).

MKL stays ahead for a single fp32 row times a small matrix that sits in cache (its
matrix-vector kernel has less fixed cost per call), times a wide output layer (which that
kernel streams well), or on one thread (oneDNN gains by splitting a large matrix across
threads). Such a row goes to MKL, with the weight stored column-major, which suits that kernel.
These rules were measured in whole models, not on one matrix alone: a lone matrix sits in
cache, a model's weights mostly do not. They are only where a model starts: which kernel wins
depends on the CPU (on an Intel Xeon with AMX, MKL on the column-major weight won at every row
count up to 64), so ``prepare_for_inference`` times both on the model's own matrices and routes
each fp32 layer's few-row products to the faster (``calibrate``: 0.15 s for a 6x6x384 model,
1.5 s for GPT-2 small; decode there 1.1-1.2x faster than with the fixed rules).

This is PyTorch's own machinery (``torch.ops.mkldnn._reorder_linear_weight`` and
``_linear_pointwise``, what ``torch.compile`` emits for a frozen CPU model), used eagerly. Those
ops are private, so every touch of them (and of the weight's version counter) is in the
"private PyTorch API" block below, behind a self-check: on first use ``packing_works`` packs a
small matrix and compares the product with ``F.linear``; if an op is missing, raises or
disagrees (a PyTorch release changed it), packing is off for the process, a warning says why,
and every layer stays a plain ``nn.Linear`` -- slower, never wrong. ``tests/test_inference.py``
fails loudly on x86-64 when that happens, so an upgrade cannot lose the speed silently. Where
oneDNN is absent, on another device or on a CPU other than x86-64 (not measured),
``prepare_for_inference`` leaves the layers as they are.
"""

from __future__ import annotations

import copy
import functools
import logging
import platform
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PACK_MIN_BYTES = 640 << 10
"""fp32 matrices smaller than this stay plain ``nn.Linear`` layers: they sit in cache, where
oneDNN's fixed cost per call (15-30 us) outweighs what it saves at every row count up to 32
(measured for the blocks of 128- and 192-wide Transformers, 192 x 768 = 576 KiB the largest,
on one and two threads); from 256 x 1024 (1 MiB) on it wins at two rows or more. bf16 matrices
are always packed: PyTorch sends them to oneDNN anyway, and unpacked it reorders the weight on
every call."""

GEMV_MAX_BYTES = 1 << 20
"""A single fp32 row times a weight of at most this many bytes goes to MKL's matrix-vector
kernel: measured faster there for matrices that stay in cache (``bench/linear.py --rows 1``)."""

WIDE = 8
"""A single fp32 row times a matrix with at least this many times more outputs than inputs (an
output layer) also goes to MKL, whose matrix-vector kernel streams such a matrix well."""

X86_64 = ("x86_64", "amd64")
"""``platform.machine()`` names (lower-cased) of the CPUs these rules were measured on."""

PACK_BATCH_HINT = 8
"""Rows the reordered layout is tuned for (oneDNN picks its blocking for this many); it serves
every row count."""

CALIBRATION_ROWS = (1, 2, 4, 8, 16, 32, 64)
"""Row counts ``calibrate`` times both kernels at; a product of more rows always goes to oneDNN
(its blocked GEMM is ahead there on every CPU measured)."""

CALIBRATION_COST = 2 * 3 * len(CALIBRATION_ROWS) * 2
"""About how many one-row passes over the model's packed layers ``calibrate`` costs: two
kernels, three calls each, at every calibrated row count, more rows taking up to twice as long."""

CALIBRATION_BUDGET_S = 3.0
"""``calibrate`` stops and keeps the fixed rules if timing takes longer than this (a very large
model, or a machine too busy to measure)."""


log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- private PyTorch API
# The only place lmforge calls PyTorch's private oneDNN ops; see packing_works.

_PRIVATE_OPS = ("_reorder_linear_weight", "_linear_pointwise", "_is_mkldnn_bf16_supported")


def _reorder(weight: Tensor) -> Tensor:
    """``weight`` ([out, in]) reordered into oneDNN's blocked layout for a few-row product."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), PACK_BATCH_HINT)


def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ W.T + bias`` with ``W`` reordered by ``_reorder``."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def bf16_native() -> bool:
    """Whether this CPU has native bf16 instructions oneDNN uses (also what ``train.precision =
    auto`` asks)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


_mkldnn_enabled = getattr(torch._C, "_get_mkldnn_enabled", lambda: torch.backends.mkldnn.enabled)
"""``torch.backends.mkldnn.enabled``'s getter, called directly (the property where it is gone):
it runs on every packed linear of every decode step, and the public property costs five times
as much (240 vs 45 ns)."""


def _weight_key(weight: Tensor) -> tuple[int, int]:
    """What identifies the values a reordered copy was made from: the storage and its in-place
    modification counter. Inference tensors have no counter: a weight created under
    ``torch.inference_mode`` and changed in place there is not noticed (call ``repack``)."""
    return weight.data_ptr(), (-1 if weight.is_inference() else weight._version)


@functools.cache
def packing_works() -> bool:
    """Whether this PyTorch's private oneDNN ops exist and compute ``F.linear`` (checked once,
    on a small fp32 matrix at 1 and 3 rows, with and without bias). False with a warning naming
    what broke, so a PyTorch upgrade that changes them costs speed, not correctness."""
    try:
        missing = [op for op in _PRIVATE_OPS if not callable(getattr(torch.ops.mkldnn, op, None))]
        if missing:
            raise RuntimeError(f"torch.ops.mkldnn has no {', '.join(missing)}")
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(24, 16, generator=generator)
        bias = torch.randn(24, generator=generator)
        with torch.no_grad():
            packed = _reorder(weight)
            for rows in (1, 3):
                x = torch.randn(rows, 16, generator=generator)
                for b in (bias, None):
                    if not torch.allclose(packed_linear(x, packed, b), F.linear(x, weight, b),
                                          atol=1e-4, rtol=1e-4):
                        raise RuntimeError(f"_linear_pointwise disagrees with F.linear at {rows} rows")
    except Exception as exc:  # noqa: BLE001 -- any failure of a private op means: do not use it
        log.warning("oneDNN weight packing is off (PyTorch %s changed its private ops: %s); "
                    "decoding runs on PyTorch's default kernels", torch.__version__, exc)
        return False
    return True


# ----------------------------------------------------------------------------- the packing rules
def worth_packing(weight: Tensor) -> bool:
    """Whether ``prepare_for_inference`` makes a ``PackedLinear`` of a layer with ``weight``."""
    return packing_supported(weight) and (
        weight.dtype != torch.float32 or weight.numel() * weight.element_size() >= PACK_MIN_BYTES
    )


def packing_supported(weight: Tensor) -> bool:
    """True when oneDNN can take ``weight``'s products here: an x86-64 CPU (where it was
    measured; elsewhere PyTorch's default kernels stay), oneDNN built in, and fp32 or bf16 (bf16
    only where the CPU has native bf16 instructions)."""
    if not platform_packs() or weight.device.type != "cpu" or not packing_works():
        return False
    if weight.dtype == torch.float32:
        return True
    return weight.dtype == torch.bfloat16 and bf16_native()


def platform_packs() -> bool:
    """Whether this machine is one the packing rules were measured on: an x86-64 CPU with a
    PyTorch built with oneDNN (where ``packing_works`` is expected to hold)."""
    return platform.machine().lower() in X86_64 and torch.backends.mkldnn.is_available()


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` that, for inference on CPU, multiplies by a copy of its weight reordered
    into oneDNN's blocked layout.

    It shares the original ``weight`` and ``bias`` parameters (a tied output layer stays tied,
    ``state_dict`` is unchanged) and takes the fast path only with gradients off (``no_grad`` or
    ``inference_mode``, as decoding and scoring run): with them on, under autocast, with oneDNN
    disabled, or for another dtype or device it is a plain ``nn.Linear``. The reordered copy is
    rebuilt when the weight is changed in place (its version counter moves), replaced
    (``.data =``, a new ``Parameter``, ``load_state_dict``), moved or cast; it is never pickled
    (``copy.deepcopy`` and ``torch.save`` work and repack on first use).
    """

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.register_parameter("weight", linear.weight)
        self.register_parameter("bias", linear.bias)  # registered even when None, as in nn.Linear
        self._packed: Tensor | None = None
        self._packed_key: tuple[int, int] | None = None
        self._mkl_rows: tuple[bool, ...] = ()  # [rows]: True sends a product of that many rows to MKL
        self._row_to_mkl_one_thread = False  # one fp32 row goes to MKL when torch runs on one thread
        self._calibrated_shape: tuple[int, ...] = ()  # the fp32 weight shape _mkl_rows was measured for
        self.repack()

    @property
    def calibrated(self) -> bool:
        """Whether ``_mkl_rows`` was measured on this machine (``calibrate``), not the fixed rules."""
        return bool(self._calibrated_shape)

    def repack(self) -> None:
        """(Re)build the reordered copy of the weight from its current values."""
        weight = self.weight.detach()
        self._packed_key = _weight_key(weight)
        if not packing_supported(weight):
            self._packed = None
            return
        with torch.no_grad():
            self._packed = _reorder(weight)
        if weight.dtype != torch.float32 or tuple(weight.shape) != self._calibrated_shape:
            self._calibrated_shape = ()  # cast or replaced: what was measured no longer applies
        if not self.calibrated:
            out_features, in_features = weight.shape
            fp32 = weight.dtype == torch.float32
            row_to_mkl = fp32 and (
                weight.numel() * weight.element_size() <= GEMV_MAX_BYTES or out_features >= WIDE * in_features
            )
            self._mkl_rows = (False, row_to_mkl)
            self._row_to_mkl_one_thread = fp32

    def route_to_mkl(self, rows: set[int] | frozenset[int]) -> None:
        """Send products of the calibrated row counts in ``rows`` (and of fewer rows than the
        next calibrated count above) to MKL, the others to oneDNN; what ``calibrate`` measured."""
        table = [False] * (CALIBRATION_ROWS[-1] + 1)
        for n in range(1, len(table)):
            bucket = next(r for r in CALIBRATION_ROWS if r >= n)
            table[n] = bucket in rows
        self._mkl_rows = tuple(table)
        self._row_to_mkl_one_thread = False
        self._calibrated_shape = tuple(self.weight.shape)

    def forward(self, x: Tensor) -> Tensor:
        params = self._parameters
        weight, bias = params["weight"], params["bias"]
        if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu") or not _mkldnn_enabled():
            return F.linear(x, weight, bias)
        if _weight_key(weight) != self._packed_key:  # changed or replaced since packing
            self.repack()
        packed = self._packed
        if packed is None or x.dtype != packed.dtype:
            return F.linear(x, weight, bias)
        rows = x.numel() // x.shape[-1]
        table = self._mkl_rows
        if (rows < len(table) and table[rows]) or (
                rows == 1 and self._row_to_mkl_one_thread and torch.get_num_threads() == 1):
            return F.linear(x, weight, bias)  # few fp32 rows where MKL was faster
        return packed_linear(x, packed, bias)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's signature
        super()._apply(fn, recurse)
        self.repack()  # moved or cast: the reordered copy must follow
        return self

    def __getstate__(self) -> dict:
        # oneDNN's opaque tensor has no storage to pickle or deep-copy: drop it, repack on use
        return {**super().__getstate__(), "_packed": None, "_packed_key": None}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, packed={self._packed is not None}"


def prepare_for_inference(model: nn.Module, *, in_place: bool = False, calibrate_kernels: bool = True) -> nn.Module:
    """A copy of ``model`` in eval mode with its ``nn.Linear`` layers ready for fast inference;
    ``model`` itself is left as it was (trainable, savable) unless ``in_place`` allows preparing
    it directly, which saves the copy's memory when the caller is done with the original.

    On CPU each bf16 ``nn.Linear``, and each fp32 one of at least ``PACK_MIN_BYTES``, becomes a
    ``PackedLinear`` (see the module docstring). fp32 weights are also stored column-major:
    ``F.linear(x, W)`` multiplies by ``W.T``, a plain GEMM when ``W`` is the transpose of a
    contiguous ``[in, out]`` matrix (HF's GPT-2 layout), which MKL runs faster at the few rows
    of a decode step; bf16 weights stay row-major, measured faster in the whole model (timing
    each matrix alone picked worse layouts). Elsewhere (CUDA, MPS) fp32 and half-precision
    weights are stored column-major. Shape and values are unchanged, only strides. For
    inference only: safetensors refuses non-contiguous tensors, so save a model before preparing
    it, not after.
    """
    if not in_place:
        model = copy.deepcopy(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.weight.is_contiguous() and (
                module.weight.dtype == torch.float32 or module.weight.device.type != "cpu"
            ):
                module.weight.data = module.weight.data.t().contiguous().t()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and worth_packing(child.weight):
                setattr(parent, name, PackedLinear(child))
    if calibrate_kernels:
        calibrate(model)
    return model.eval()


def calibrate(model: nn.Module, budget_s: float = CALIBRATION_BUDGET_S) -> bool:
    """Choose, by timing them on this machine, which kernel takes each fp32 ``PackedLinear``'s
    products of 1 to 64 rows: MKL on the column-major weight, or oneDNN on the reordered one.

    Which wins depends on the CPU, not only on the shapes: on the AMD EPYC the fixed rules were
    measured on, oneDNN won from 2 rows on (and for big matrices at 1 row); on an Intel Xeon
    with AMX, MKL won at every row count up to 64 (``bench/linear.py``). So the layers are
    grouped by shape and each group is timed as a set, every matrix in turn (as a decode step
    streams them, not one matrix sitting in cache), through both kernels at each of
    ``CALIBRATION_ROWS``, best of two. Either choice computes the same product (to rounding),
    so a busy moment that skews a timing costs speed, never correctness. Returns False, keeping
    the fixed rules, when there is nothing to time or the timing overruns ``budget_s``.
    """
    groups: dict[tuple[int, int], list[PackedLinear]] = {}
    for module in model.modules():
        if isinstance(module, PackedLinear) and module._packed is not None and module.weight.dtype == torch.float32:
            groups.setdefault(tuple(module.weight.shape), []).append(module)
    if not groups:
        return False
    deadline = time.perf_counter() + budget_s
    chosen: dict[tuple[int, int], set[int]] = {}
    with torch.inference_mode():
        one_pass = _best_of(lambda: [F.linear(torch.zeros(1, m.in_features), m.weight, m.bias)
                                     for layers in groups.values() for m in layers], repeats=1)
        if one_pass * CALIBRATION_COST > budget_s:
            log.info("kernel calibration would take over %.1f s; the fixed kernel rules stay", budget_s)
            return False
        for shape, layers in groups.items():
            chosen[shape] = set()
            for rows in CALIBRATION_ROWS:
                x = torch.randn(rows, shape[1])
                mkl = _best_of(lambda x=x, layers=layers: [F.linear(x, m.weight, m.bias) for m in layers])
                onednn = _best_of(lambda x=x, layers=layers: [packed_linear(x, m._packed, m.bias) for m in layers])
                if mkl < onednn:
                    chosen[shape].add(rows)
                if time.perf_counter() > deadline:
                    log.info("kernel calibration overran %.1f s; the fixed kernel rules stay", budget_s)
                    return False
    for shape, layers in groups.items():
        for module in layers:
            module.route_to_mkl(chosen[shape])
    log.debug("fp32 products routed to MKL at rows %s", {s: sorted(r) for s, r in chosen.items()})
    return True


def _best_of(fn, repeats: int = 2) -> float:  # noqa: ANN001 -- a thunk
    """Best wall time of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
