"""Training throughput: tokens/s, ms/step and model FLOPs utilisation, fp32 vs bf16 autocast.

Runs the real trainer (``lm.training.trainer.Trainer.train_step``) on the issue's two reference setups:

* Transformer n_layer=4, n_head=4, n_embd=128, block 64, batch 12, characters, Tiny Shakespeare;
* LSTM 2 x 200, bptt 35, batch 20, words, Penn Treebank.

Beside them, on the same token stream, a reference loop for each: the minimal-GPT loop the
issue quotes (23.7k tokens/s where it measured) and pytorch/examples' word_language_model loop
(9.2k). The issue's targets (31k, 11k) are read as ratios to those references (1.31x, 1.20x),
because this machine's absolute speed is not the one the issue measured on.

MFU = 6 x matmul parameters (all but embedding lookups) x tokens/s over the machine's matmul FLOP/s, measured here for fp32 and
bf16. Timing takes turns in rounds (the best round counts), so a burst of load elsewhere hits
every loop alike. With ``--quality-steps N`` each setup also trains N steps per precision and
prints the validation loss, to show what bf16 costs in quality.

    python bench/train.py [--steps 20] [--rounds 3] [--quality-steps 400] [--threads 2] [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script, this directory comes first on sys.path, and bench/tokenizer.py would shadow
# the ``tokenizer`` package that lm imports.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from lm.config import run_config_from_dict  # noqa: E402
from lm.training.trainer import Trainer  # noqa: E402

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


# ---------------------------------------------------------------------------------------------
# Reference loops, run in the same process on the same token stream, so that the comparison does
# not depend on where the absolute figures were measured. Each is a faithful re-statement
# of a well-known public baseline's model and training step, written here:
#   * "minimal GPT": the nanoGPT-style model and loop (bias-free pre-LN blocks, exact GELU, fused
#     QKV, SDPA, learned positions, tied head; AdamW with decay on matrices, clip 1.0; fp32 on CPU,
#     as that project runs there), at the CPU demo size;
#   * "pytorch/examples": word_language_model's RNNModel (seq-first nn.LSTM, log-softmax + NLLLoss,
#     manual SGD update p -= lr * grad, clip 0.25, hidden state repackaged each batch).


class _RefAttention(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.h = h
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class _RefBlock(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, bias=False)
        self.attn = _RefAttention(d, h)
        self.ln_2 = nn.LayerNorm(d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d, bias=False), nn.GELU(), nn.Linear(4 * d, d, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class RefGPT(nn.Module):
    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, d: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block, d)
        self.blocks = nn.ModuleList(_RefBlock(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("2.weight") or "c_proj" in name else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def ref_gpt_step(tokens: np.ndarray, vocab: int, batch: int, block: int) -> Callable[[], float]:
    torch.manual_seed(0)
    model = RefGPT(vocab, block, 4, 4, 128)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    rng = np.random.default_rng(0)

    def step() -> float:
        ix = rng.integers(0, len(tokens) - block - 1, batch)
        x = torch.stack([torch.from_numpy(tokens[i : i + block].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(tokens[i + 1 : i + 1 + block].astype(np.int64)) for i in ix])
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


class RefRNNModel(nn.Module):
    def __init__(self, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, x: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor]):  # noqa: ANN201
        output, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.decoder.out_features)
        return F.log_softmax(decoded, dim=1), hidden


def ref_lstm_step(tokens: np.ndarray, vocab: int, batch: int, bptt: int) -> Callable[[], float]:
    torch.manual_seed(0)
    model = RefRNNModel(vocab, 200, 200, 2, 0.2)
    n = len(tokens) // batch
    data = torch.from_numpy(tokens[: n * batch].astype(np.int64)).view(batch, n).t().contiguous()  # [n, batch]
    criterion = nn.NLLLoss()
    hidden = (torch.zeros(2, batch, 200), torch.zeros(2, batch, 200))
    pos = 0

    def step() -> float:
        nonlocal hidden, pos
        if pos + bptt + 1 > n:
            pos = 0
        x, y = data[pos : pos + bptt], data[pos + 1 : pos + 1 + bptt].reshape(-1)
        pos += bptt
        hidden = tuple(h.detach() for h in hidden)
        model.zero_grad()
        output, hidden = model(x, hidden)
        loss = criterion(output, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-20.0)
        return loss.item()

    return step


def matmul_params(model: nn.Module) -> int:
    """Parameters that take part in matrix products: all but input-embedding tables (a lookup
    costs no FLOPs; a table tied to the output layer is counted, as the output layer)."""
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    lookup = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)} - linear
    return sum(p.numel() for p in model.parameters() if id(p) not in lookup)


def time_steps(step: Callable[[], object], steps: int, warmup: int) -> float:
    """Seconds per call, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps if steps else 0.0


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


REFERENCE_MATH = {"pos_emb": "learned", "activation": "gelu"}
"""The minimal-GPT reference's architecture where lmforge's default differs (RoPE, tanh GELU):
the ``+refmath`` variant trains exactly the reference's model, so that row measures the trainer
alone, and the gap between it and ``fp32`` is what the default architecture costs."""


def make_trainer(spec: dict, tmp: Path, name: str, variant: str, steps: int) -> Trainer:
    """A trainer for ``variant``: a precision (``fp32``, ``bf16``), optionally ``+compile`` or
    ``+refmath`` (the reference's model: ``REFERENCE_MATH``)."""
    precision, _, extra = variant.partition("+")
    model = {**spec["model"], **(REFERENCE_MATH if extra == "refmath" else {})}
    train = {**spec["train"], "out_dir": str(tmp / name / variant), "precision": precision,
             "compile": extra == "compile", "max_steps": max(steps, 1), "progress": False, "eval_every": 10**9}
    return Trainer(run_config_from_dict({**spec, "model": model, "train": train}))


def variants(name: str, compile_too: bool) -> list[str]:
    """What to time for a setup: both precisions, and torch.compile for the Transformer if asked."""
    out = ["fp32", "bf16"]
    if name.startswith("transformer"):
        out += ["fp32+refmath", "bf16+refmath"]
        if compile_too:
            out += ["fp32+compile", "bf16+compile"]
    return out


TARGETS = {("transformer 4x4x128 char", "fp32"): 1.05, ("transformer 4x4x128 char", "bf16"): 1.35,
           ("lstm 2x200 word", "fp32"): 1.10}
"""Issue 19's targets, as ratios to the reference loop run here (no compile)."""


def reference_step(name: str, t: Trainer) -> Callable[[], float]:
    tokens, vocab = t.train_tokens, t.tokenizer.vocab_size
    if name.startswith("transformer"):
        return ref_gpt_step(tokens, vocab, t.cfg.batch_size, t.cfg.seq_len)
    return ref_lstm_step(tokens, vocab, t.cfg.batch_size, t.cfg.seq_len)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (taking turns); the best round counts")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quality-steps", type=int, default=0, help="also train this many steps and report val loss")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="also time the Transformer under torch.compile")
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
            budget = 10**6
            kinds = variants(name, args.compile)
            trainers = {v: make_trainer(spec, tmp, name.replace(" ", "_"), v, budget) for v in kinds}
            steps: dict[str, Callable[[], object]] = {"reference": reference_step(name, trainers["fp32"])}
            steps.update({p: t.train_step for p, t in trainers.items()})
            for fn in steps.values():
                time_steps(fn, 0, args.warmup)
            best = {k: math.inf for k in steps}
            for _ in range(args.rounds):  # taking turns, so a burst of load elsewhere hits all alike
                for k, fn in steps.items():
                    best[k] = min(best[k], time_steps(fn, args.steps, 0))
            t = trainers["fp32"]
            tokens = t.cfg.batch_size * t.cfg.seq_len
            params = matmul_params(t.model)
            ref_tps = tokens / best["reference"]
            for precision in ("reference", *kinds):
                dt = best[precision]
                tps = tokens / dt
                mfu = 6 * params * tps / peak["bf16" if precision.startswith("bf16") else "fp32"]
                val = ""
                if args.quality_steps and precision in ("fp32", "bf16"):  # compiling changes no math
                    q = make_trainer(spec, tmp, name.replace(" ", "_") + "_q", precision, args.quality_steps)
                    with contextlib.redirect_stderr(None):
                        q.fit()
                    val = f"{q.evaluate(q.valid_tokens, 50):.4f}"
                goal = f">= {TARGETS[name, precision]:.2f}x" if (name, precision) in TARGETS else ""
                rows.append((name, precision, params, tps, dt * 1000, mfu, tps / ref_tps, goal, val))
    print()
    print(f"{'setup':26} {'variant':12} {'mm params':>10} {'tokens/s':>9} {'ms/step':>8} {'MFU':>6} {'vs ref':>7} "
          f"{'target':>8} {'val loss':>9}")
    for name, precision, params, tps, ms, mfu, ratio, goal, val in rows:
        print(f"{name:26} {precision:12} {params:>10,} {tps:>9,.0f} {ms:>8.1f} {mfu:>6.1%} {ratio:>6.2f}x "
              f"{goal:>8} {val:>9}")
    print("\nreference: the minimal-GPT loop (transformer) or pytorch/examples' word_language_model loop (lstm), "
          "fp32, same data;\n+refmath: lmforge's trainer on the reference's model (learned positions, exact GELU) "
          "instead of its default (RoPE, tanh GELU);\ntarget: issue 19's, as a ratio to the reference.")


if __name__ == "__main__":
    main()
