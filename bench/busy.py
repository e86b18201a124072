"""Training and scoring speed with and without a busy neighbour: one other process spinning on
one core, as on a loaded laptop or a shared CI box.

Each cell is a fresh ``lmforge`` process (so OpenMP reads its environment at start), run on a
small Tiny Shakespeare-like corpus with the shipped char Transformer's shape:

* ``lmforge default``: what a user gets with no setting (``lm.threads``: the cores no other
  process keeps busy, re-counted every few seconds while training);
* ``all cores``: torch's own default, a thread per core (``train.threads`` / ``--threads`` set
  to the core count), the cliff the issue measured;
* ``1 thread``: ``train.threads=1`` / ``--threads 1``.

Neighbour ``mid-run`` starts spinning a few seconds into the training run (scoring then runs
with it busy): the default must notice it while it trains.

    python bench/busy.py [--steps 20] [--score-chars 60000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
CONFIG = REPO / "configs" / "shakespeare-char.toml"
CHECKPOINT = REPO / "checkpoints" / "shakespeare-char"

MODES = {
    "lmforge default": [],
    "all cores": [str(os.cpu_count() or 1)],
    "1 thread": ["1"],
}
NEIGHBOURS = {"none": None, "one busy core": 0.0, "mid-run": 3.0}
"""Neighbour -> seconds after the run starts that it starts spinning (None: no neighbour)."""


def neighbour(delay: float) -> subprocess.Popen:
    """A process that keeps one core busy, from ``delay`` seconds on, until killed."""
    code = f"import time\ntime.sleep({delay})\nwhile True: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def train_tokens_per_s(corpus: Path, out: Path, steps: int, threads: list[str]) -> float:
    sets = [f"data.train=['{corpus}']", f"train.out_dir={out}", f"train.max_steps={steps}",
            f"train.eval_every={steps}", "train.eval_batches=2", "train.log_every=1", "train.progress=false",
            "train.max_time=0", "train.warmup_steps=2"]
    if threads:
        sets.append(f"train.threads={threads[0]}")
    cmd = [sys.executable, "-m", "lm.cli", "train", "--config", str(CONFIG)]
    for s in sets:
        cmd += ["--set", s]
    run(cmd)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][2:]  # skip warm-up steps
    return sum(rates) / max(len(rates), 1)


def score_seconds(text: Path, threads: list[str]) -> float:
    cmd = [sys.executable, "-m", "lm.cli", "score", str(CHECKPOINT), "--input", str(text)]
    if threads:
        cmd += ["--threads", threads[0]]
    return run(cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--score-chars", type=int, default=60_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        source = SHAKESPEARE.read_text() if SHAKESPEARE.is_file() else "To be, or not to be.\n" * 20_000
        corpus = tmp / "corpus.txt"
        corpus.write_text(source[:400_000])
        text = tmp / "score.txt"
        text.write_text(source[-args.score_chars:])
        print(f"cpus: {os.cpu_count()}, steps {args.steps} (batch/seq from {CONFIG.name}), "
              f"scoring {args.score_chars:,} chars with {CHECKPOINT.name}")
        print(f"| {'neighbour':<13} | {'threads':<15} | {'train tokens/s':>14} | {'score s':>8} |")
        print(f"|{'-' * 15}|{'-' * 17}|{'-' * 16}|{'-' * 10}|")
        for label, delay in NEIGHBOURS.items():
            for mode, threads in MODES.items():
                spinner = neighbour(delay) if delay is not None else None
                try:
                    tps = train_tokens_per_s(corpus, tmp / f"run-{label}-{mode}", args.steps, threads)
                    secs = score_seconds(text, threads)
                finally:
                    if spinner is not None:
                        spinner.kill()
                        spinner.wait()
                print(f"| {label:<13} | {mode:<15} | {tps:>14,.0f} | {secs:>8.1f} |", flush=True)

if __name__ == "__main__":
    main()
