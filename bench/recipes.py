"""The recipe ablation (issue 16): each training recipe alone, against the baseline, at a fixed
wall-clock budget, on the char Transformer and the PTB word LSTM of ``bench/quality.py``.

Each row trains from scratch through the trainer (the same code as ``lmforge train``) for the
budget and prints validation loss and perplexity at the end and the training tokens per second
(what a recipe costs). The Transformer's last row combines every knob that beat its baseline.

    python bench/recipes.py [--only transformer|lstm] [--scale 1.0] [--threads N]

``--scale`` multiplies the budgets (75 s and 105 s, bench/quality.py's) for a quicker look.
Run it alone: two cores, and each row's figure is only as good as the cores it had.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

_QUALITY = Path(__file__).resolve().parent / "quality.py"
_spec = importlib.util.spec_from_file_location("bench_quality", _QUALITY)
quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality)  # also takes bench/ off sys.path (its tokenizer.py shadows ours)

import torch  # noqa: E402

from lm.config import run_config_from_dict  # noqa: E402
from lm.training.trainer import Trainer  # noqa: E402

Recipe = dict[str, dict[str, Any]]
"""``{"model": {...}, "train": {...}}``: the keys a row sets on top of its family's baseline."""

BASELINES: dict[str, Recipe] = {"char": {"train": {"optimizer": "adamw"}}, "ptb": {}}
"""What each family's baseline changes of bench/quality.py's setup: the char Transformer's is
AdamW alone (quality.py now trains it with Muon, which this table measured)."""

ROWS: dict[str, tuple[str, dict[str, Recipe]]] = {
    "transformer": ("char", {
        "baseline": {},
        "muon": {"train": {"optimizer": "muon"}},
        "qk_norm": {"model": {"qk_norm": True}},
        "relu2": {"model": {"activation": "relu2"}},
        "softcap 15": {"model": {"logit_softcap": 15.0}},
        "untied head": {"model": {"tie_weights": False}},
        "ema 0.99": {"train": {"ema": 0.99}},
        "weight decay 0.3": {"train": {"weight_decay": 0.3}},
    }),
    "lstm": ("ptb", {
        "baseline": {},
        "dropout 0.2": {"model": {"dropout": 0.2}},
        "dropout 0.2 locked": {"model": {"dropout": 0.2, "locked_dropout": True}},
        "weight_drop 0.2": {"model": {"weight_drop": 0.2}},
        "word_dropout 0.1": {"model": {"word_dropout": 0.1}},
        # NT-ASGD needs evaluations to see validation stall: every 300 steps, 20 batches
        "asgd": {"train": {"optimizer": "asgd", "asgd_nonmono": 2, "eval_every": 300, "eval_batches": 20}},
        "ema 0.99": {"train": {"ema": 0.99}},
    }),
}


def merged(base: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    for table, values in recipe.items():
        cfg[table] = {**cfg[table], **values}
    return cfg


def run_row(setup: str, recipe: Recipe, scale: float, threads: int) -> dict[str, float]:
    base = quality.SETUPS[setup]
    budget = base["budget"] * scale
    with tempfile.TemporaryDirectory() as d:
        train = {"eval_every": 10**9, "progress": False, "threads": threads}
        cfg = merged(merged(base["config"], BASELINES[setup]), {"train": train})
        cfg = merged(cfg, recipe)
        cfg["train"] |= {"out_dir": d, "max_time": budget}
        trainer = Trainer(run_config_from_dict(cfg))
        t0 = time.perf_counter()
        result = trainer.fit()
        wall = time.perf_counter() - t0
    val = result.last_val_loss
    return {"steps": result.steps, "tok_s": result.tokens_seen / result.elapsed, "val": val,
            "ppl": math.exp(val), "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=sorted(ROWS))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the wall-clock budgets")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the trainer's governor)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not quality.DATA.is_dir():
        raise SystemExit(f"needs the corpora at {quality.DATA}")
    table: list[tuple[str, str, dict[str, float]]] = []
    for family, (setup, rows) in ROWS.items():
        if args.only not in (None, family):
            continue
        results = {}
        for name, recipe in rows.items():
            results[name] = run_row(setup, recipe, args.scale, args.threads)
            print(f"{family:11} {name:22} val {results[name]['val']:.4f}  {results[name]['tok_s']:,.0f} tok/s",
                  flush=True)
            table.append((family, name, results[name]))
        if family == "transformer":
            winners = [n for n in rows if n != "baseline" and results[n]["val"] < results["baseline"]["val"]]
            if len(winners) > 1:
                combined: Recipe = {}
                for n in winners:
                    for t, values in rows[n].items():
                        combined[t] = {**combined.get(t, {}), **values}
                name = " + ".join(winners)
                table.append((family, name, run_row(setup, combined, args.scale, args.threads)))
    print(f"\nthreads {args.threads or torch.get_num_threads()}, budgets: char {quality.SETUPS['char']['budget'] * args.scale:g} s, "
          f"ptb {quality.SETUPS['ptb']['budget'] * args.scale:g} s")
    print(f"{'family':11} {'recipe':40} {'steps':>6} {'tok/s':>8} {'val loss':>9} {'val ppl':>8} {'vs base':>8}")
    baselines = {f: r["val"] for f, n, r in table if n == "baseline"}
    for family, name, r in table:
        delta = r["val"] - baselines[family]
        print(f"{family:11} {name:40} {r['steps']:>6} {r['tok_s']:>8,.0f} {r['val']:>9.4f} {r['ppl']:>8.2f} {delta:>+8.4f}")


if __name__ == "__main__":
    main()
