"""Training throughput: tokens/s, ms/step and model FLOPs utilisation, fp32 vs bf16 autocast.

Runs the real trainer (``lm.train.Trainer.train_step``) on the issue's two reference setups:

* Transformer n_layer=4, n_head=4, n_embd=128, block 64, batch 12, characters, Tiny Shakespeare;
* LSTM 2 x 200, bptt 35, batch 20, words, Penn Treebank.

MFU = 6 x parameters x tokens/s over the machine's matmul FLOP/s, measured here for fp32 and
bf16. With ``--quality-steps N`` each setup also trains N steps per precision and prints the
validation loss, to show that bf16 costs no quality.

    python bench/train.py [--steps 40] [--quality-steps 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this directory comes first on sys.path, and bench/tokenizer.py would shadow
# the ``tokenizer`` package that lm imports.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import torch  # noqa: E402

from lm.config import run_config_from_dict  # noqa: E402
from lm.train import Trainer  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def matmul_flops(dtype: torch.dtype, n: int = 1024, reps: int = 20) -> float:
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def setups(tmp: Path) -> dict[str, dict]:
    shakespeare = DATA / "tinyshakespeare" / "input.txt"
    ptb = DATA / "ptb"
    return {
        "transformer 4x4x128 char": {
            "data": {"train": [str(shakespeare)], "valid_fraction": 0.1, "cache_dir": str(tmp / "cache")},
            "tokenizer": {"kind": "char"},
            "model": {"family": "transformer", "block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128,
                      "dropout": 0.0},
            "train": {"batch_size": 12, "seq_len": 64, "lr": 1e-3, "warmup_steps": 20, "eval_batches": 50},
        },
        "lstm 2x200 word": {
            "data": {"train": [str(ptb)], "cache_dir": str(tmp / "cache")},
            "tokenizer": {"kind": "word"},
            "model": {"family": "rnn", "cell": "lstm", "n_layer": 2, "n_embd": 200, "n_hidden": 200,
                      "dropout": 0.2, "tie_weights": False},
            "train": {"batch_size": 20, "seq_len": 35, "optimizer": "sgd", "lr": 20.0, "schedule": "constant",
                      "warmup_steps": 0, "weight_decay": 0.0, "grad_clip": 0.25, "eval_batches": 50},
        },
    }


def make_trainer(spec: dict, tmp: Path, name: str, precision: str, steps: int) -> Trainer:
    train = {**spec["train"], "out_dir": str(tmp / name / precision), "precision": precision,
             "max_steps": max(steps, 1), "progress": False, "eval_every": 10**9}
    return Trainer(run_config_from_dict({**spec, "train": train}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="timed steps per setup and precision")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quality-steps", type=int, default=0, help="also train this many steps and report val loss")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not DATA.is_dir():
        raise SystemExit(f"needs the corpora at {DATA}")
    peak = {"fp32": matmul_flops(torch.float32), "bf16": matmul_flops(torch.bfloat16)}
    print(f"matmul 1024^3: fp32 {peak['fp32'] / 1e12:.3f} TFLOP/s, bf16 {peak['bf16'] / 1e12:.3f} TFLOP/s, "
          f"threads {torch.get_num_threads()}")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, spec in setups(tmp).items():
            for precision in ("fp32", "bf16"):
                t = make_trainer(spec, tmp, name.replace(" ", "_"), precision, args.steps + args.warmup)
                params = sum(p.numel() for p in t.model.parameters())
                tokens = t.cfg.batch_size * t.cfg.seq_len
                for _ in range(args.warmup):
                    t.train_step()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    t.train_step()
                dt = (time.perf_counter() - t0) / args.steps
                tps = tokens / dt
                mfu = 6 * params * tps / peak[precision]
                val = ""
                if args.quality_steps:
                    q = make_trainer(spec, tmp, name.replace(" ", "_") + "_q", precision, args.quality_steps)
                    with contextlib.redirect_stderr(None):
                        q.fit()
                    val = f"{q.evaluate(q.valid_tokens, 50):.4f}"
                rows.append((name, precision, params, tps, dt * 1000, mfu, val))
    print()
    print(f"{'setup':28} {'prec':5} {'params':>10} {'tokens/s':>10} {'ms/step':>9} {'MFU':>7} {'val loss':>9}")
    for name, precision, params, tps, ms, mfu, val in rows:
        print(f"{name:28} {precision:5} {params:>10,} {tps:>10,.0f} {ms:>9.1f} {mfu:>6.1%} {val:>9}")


if __name__ == "__main__":
    main()
