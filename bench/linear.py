"""The matrix products of one decode step, by kernel: why ``lm.inference.PackedLinear`` exists.

    python bench/linear.py [--rows 1,2,4,8,16,32,64,512] [--threads N] [--repeats 20]

For the ``nn.Linear`` layers of each benchmark model (the 4x4x128 and 6x6x384 Transformers of
``bench/decode.py``: GPT-2 layout, 10,000-word tied output layer) it times every matrix applied
once to a batch of ``rows`` rows, in turn, through: PyTorch's default ``F.linear`` with the weight
row-major (``row``) and column-major (``col``, how ``prepare_for_inference`` stores fp32
weights), oneDNN with the weight reordered once ahead of time (``packed``, every matrix), and
what ``prepare_for_inference`` makes of each layer (``ours``: small fp32 matrices stay
``nn.Linear``, the others become ``PackedLinear``, whose rule picks MKL or oneDNN per call).
Milliseconds per set, best of ``--repeats``; the last column is the speed-up of ``ours`` over
the better default.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/tokenizer.py shadows

from lm.config import TransformerConfig  # noqa: E402
from lm.inference import (  # noqa: E402
    PACK_BATCH_HINT,
    PackedLinear,
    packed_linear,
    packing_supported,
    prepare_for_inference,
)
from lm.models import build_model  # noqa: E402

VOCAB = 10_000
MODELS = {"4x4x128": (4, 4, 128), "6x6x384": (6, 6, 384)}


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,2,4,8,16,32,64,512")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per set of products, "
          f"best of {args.repeats}; packed for {PACK_BATCH_HINT} rows")
    print(f"{'model':<8} {'dtype':<5} {'rows':>5} {'row':>8} {'col':>8} {'packed':>8} {'ours':>8} {'speed-up':>9}")
    for name, (n_layer, n_head, n_embd) in MODELS.items():
        for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if not packing_supported(torch.ones(1, dtype=dtype)):
                continue
            torch.manual_seed(0)
            model = build_model(TransformerConfig(vocab_size=VOCAB, block_size=512, n_layer=n_layer, n_head=n_head,
                                                  n_embd=n_embd, pos_emb="learned", bias=True)).to(dtype).eval()
            layers = linears(model)
            cols = [layer.weight.detach().t().contiguous().t() for layer in layers]
            packed = [PackedLinear(layer) for layer in layers]  # every matrix, whatever its size
            # what prepare_for_inference makes of each (fp32: column-major; packed if big enough)
            ours = linears(prepare_for_inference(model))
            for rows in (int(r) for r in args.rows.split(",")):
                xs = [torch.randn(rows, layer.in_features, dtype=dtype) for layer in layers]
                reps = max(3, args.repeats // 4) if rows >= 256 else args.repeats
                with torch.inference_mode():
                    t_row = best_ms(lambda: [F.linear(x, m.weight, m.bias) for x, m in zip(xs, layers, strict=True)], reps)  # noqa: B023
                    t_col = best_ms(lambda: [F.linear(x, w, m.bias) for x, w, m in zip(xs, cols, layers, strict=True)], reps)  # noqa: B023
                    t_pk = best_ms(lambda: [packed_linear(x, m._packed, m.bias) for x, m in zip(xs, packed, strict=True)], reps)  # noqa: B023
                    t_ours = best_ms(lambda: [m(x) for x, m in zip(xs, ours, strict=True)], reps)  # noqa: B023
                print(f"{name:<8} {label:<5} {rows:>5} {t_row:8.2f} {t_col:8.2f} {t_pk:8.2f} "
                      f"{t_ours:8.2f} {min(t_row, t_col) / t_ours:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
