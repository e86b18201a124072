"""A budgeted run: ``lmforge train --input FILE --minutes N`` without a config.

The rule (the README's "Train on a time budget" says the same):

1. **Tokenizer.** A corpus that marks unknown words with ``<unk>`` has been tokenized into
   words already (Penn Treebank's convention): ``word``. Otherwise characters (``char``, with
   byte fallback) up to ``SUBWORD_FROM`` bytes and a ``bpe`` vocabulary of 4,096 pieces above,
   where a character model's context would span too little text.
2. **Model.** Characters and pieces train a Transformer, words an LSTM (the families the
   shipped models measured best with). The size is measured, not guessed: each candidate of
   ``TRANSFORMERS`` (``LSTMS``), smallest first, trains a few steps on this machine, at the
   precision and batch of the run, and the run takes the largest whose measured throughput
   lets it see ``TOKENS_PER_PARAM`` tokens per parameter in the budget (a Transformer; the
   hand-tuned ``configs/shakespeare-char.toml`` sees 8.4 in its 20 minutes) or ``LSTM_EPOCHS``
   passes over the corpus (an LSTM, whose cost is its recurrence, not its embedding).
3. **Optimizer, regularisation and schedule.** A Transformer trains with Muon (AdamW for its
   embeddings, norms and head: the recipe ``bench/recipes.py`` measured best), an LSTM with
   SGD as ``configs/ptb-word.toml``. Dropout grows with the passes the budget makes over the
   corpus (none under two, 0.1 under twenty, 0.2 beyond); the learning rate shrinks with the
   width (2e-3 at 192, as the shipped char model, times ``sqrt(192 / width)``) and decays on a
   cosine to the end of the budget, which counts training time (evaluation is excluded, as in
   every config) less the seconds the measuring took.

The plan is a run config like any other (``run_config.json`` in the run directory), and
``--set`` overrides apply to it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lm.config import ConfigError, run_config_from_dict
from lm.devices import resolve_device
from lm.losses import mean_nll
from lm.models import build_model
from lm.training.optim import build_optimizer
from lm.training.precision import autocast_context, resolve_precision

SUBWORD_FROM = 8_000_000
"""Bytes of text from which the budgeted run tokenizes into BPE pieces instead of characters."""
TOKENS_PER_PARAM = 8.0
LSTM_EPOCHS = 10.0
TRANSFORMERS = [(2, 2, 64), (4, 4, 128), (4, 4, 192), (4, 4, 256), (6, 6, 288), (6, 6, 384), (8, 8, 512)]
"""(layers, heads, width), smallest first."""
LSTMS = [200, 300, 450, 650]
"""Two-layer tied LSTMs by hidden (= embedding) width, smallest first."""
MEASURE_STEPS = 3
MEASURE_DROPOUT = {False: 0.1, True: 0.4}
"""The dropout candidates are measured with (Transformer, LSTM): what the run trains with, short
of a corpus so large that one pass fills the budget (then the run is faster than measured)."""


@dataclass(frozen=True)
class Candidate:
    name: str
    model: dict[str, Any]
    params: int
    tokens_per_s: float


def corpus_facts(path: Path) -> tuple[str, int, int, int]:
    """The tokenizer kind the rule picks for ``path``, its size in bytes, and estimates of the
    tokens that kind will make of it and of the vocabulary (from the first 4 MB)."""
    if not path.is_file():
        raise ConfigError(f"--input {path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise ConfigError(f"--input {path}: the file is empty")
    with path.open(encoding="utf-8", errors="replace") as fh:
        head = fh.read(4_000_000)
    scale = size / max(len(head.encode()), 1)
    words = head.split()
    if "<unk>" in words:
        return "word", size, int((len(words) + head.count("\n")) * scale), len(set(words)) + 4
    if size >= SUBWORD_FROM:
        return "bpe", size, size // 4, 4096
    return "char", size, int(len(head) * scale), len(set(head)) + 256 + 4


def _measure(model_cfg: dict[str, Any], vocab: int, train: dict[str, Any], device: torch.device,
             precision: str) -> tuple[int, float]:
    """(parameters, training tokens per second) of one candidate: a few real optimizer steps."""
    run = run_config_from_dict({"model": model_cfg, "train": {**train, "out_dir": "unused"}})
    torch.manual_seed(0)
    model = build_model(run.model_config(vocab)).to(device).train()
    optimizer = build_optimizer(model, run.train)
    rows, seq = run.train.batch_size, run.train.seq_len
    x = torch.randint(0, vocab, (rows, seq + 1), device=device)
    times = []
    for _ in range(MEASURE_STEPS + 1):  # the first step warms the kernels up
        t0 = time.perf_counter()
        with autocast_context(precision, device):
            logits, _ = model(x[:, :-1], use_cache=False)
        mean_nll(logits, x[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    return params, rows * seq / (sum(times[1:]) / MEASURE_STEPS)


def candidates(kind: str, block_size: int) -> list[tuple[str, dict[str, Any]]]:
    if kind == "word":
        return [(f"LSTM 2x{h}", {"family": "rnn", "cell": "lstm", "n_layer": 2, "n_embd": h, "n_hidden": h,
                                 "tie_weights": True}) for h in LSTMS]
    return [(f"Transformer {n}x{h}x{d}", {"family": "transformer", "n_layer": n, "n_head": h, "n_embd": d,
                                           "block_size": block_size, "pos_emb": "rope"}) for n, h, d in TRANSFORMERS]


def plan(path: Path, minutes: float, *, device: str = "auto", log=print) -> dict[str, Any]:  # noqa: ANN001
    """The run config dict for ``path`` and ``minutes``, by the module's rule (measures here)."""
    if not (minutes > 0 and math.isfinite(minutes)):
        raise ConfigError(f"--minutes must be a positive number, got {minutes:g}")
    kind, size, tokens, vocab = corpus_facts(path)
    dev = resolve_device(device)
    precision = resolve_precision("auto", dev)
    word = kind == "word"
    train: dict[str, Any] = ({"batch_size": 20, "seq_len": 35, "optimizer": "sgd", "lr": 20.0, "min_lr": 0.5,
                              "warmup_steps": 0, "weight_decay": 0.0, "grad_clip": 0.25} if word else
                             {"batch_size": 32, "seq_len": 128, "optimizer": "muon", "warmup_steps": 100,
                              "weight_decay": 0.1, "beta2": 0.99, "grad_clip": 1.0})
    rows = int(0.9 * tokens / train["seq_len"])  # training windows (the last 10% is validation)
    while rows < train["batch_size"] and train["seq_len"] > 16 and not word:  # a short text: shorter windows
        train["seq_len"] //= 2
        rows = int(0.9 * tokens / train["seq_len"])
    train["batch_size"] = max(1, min(train["batch_size"], rows))
    started = time.perf_counter()
    budget = minutes * 60.0
    chosen: Candidate | None = None
    for name, model in candidates(kind, train["seq_len"]):
        # with dropout, as the run will train: on CPU, attention dropout takes SDPA off its fused
        # kernel, 1.6x slower steps at 4x4x192 (measured without it: 22.3k tokens/s; training: 13.5k)
        params, rate = _measure({**model, "dropout": MEASURE_DROPOUT[kind == "word"]}, vocab, train, dev, precision)
        seconds = budget - (time.perf_counter() - started)
        enough = rate * seconds >= (LSTM_EPOCHS * tokens if word else TOKENS_PER_PARAM * params)
        log(f"budget: {name}: {params / 1e6:.2f}M parameters, {rate:,.0f} tokens/s measured -> "
            f"{rate * seconds / 1e6:.1f}M tokens in the budget{'' if enough else ' (too few)'}")
        if not enough and chosen is not None:
            break
        chosen = Candidate(name, model, params, rate)
        if not enough:  # even the smallest falls short: train it anyway
            break
    assert chosen is not None
    seconds = max(budget - (time.perf_counter() - started), 1.0)
    epochs = chosen.tokens_per_s * seconds / max(tokens, 1)
    dropout = 0.0 if epochs < 2 else 0.1 if epochs < 20 else 0.2
    model = {**chosen.model, "dropout": 0.4 if word else dropout}
    if word:
        model["emb_dropout"] = 0.1
    else:
        width = chosen.model["n_embd"]
        train |= {"lr": round(2e-3 * math.sqrt(192 / width), 6)}
        train["min_lr"] = round(train["lr"] / 20, 7)
    steps = max(int(chosen.tokens_per_s * seconds / (train["batch_size"] * train["seq_len"])), 1)
    train |= {"out_dir": f"runs/{path.stem}-{minutes:g}min", "max_steps": 10 * steps + 1000, "max_time": round(seconds, 1),
              "schedule": "cosine", "precision": "auto", "eval_every": max(steps // 16, 50), "eval_batches": 40}
    log(f"budget: training {chosen.name} on {kind} tokens for {seconds:.0f} s: ~{steps:,} steps, "
        f"~{epochs:.1f} passes over the corpus ({size:,} bytes), dropout {model['dropout']:g}, lr {train['lr']:g}")
    return {"data": {"train": [str(path)], "valid_fraction": 0.1, "batching": "sequential" if word else "random"},
            "tokenizer": {"kind": kind, **({"vocab_size": 4096} if kind == "bpe" else {}),
                          **({"eos_at_newline": True} if word else {})},
            "model": model, "train": train}
