"""The budgeted run against the hand-tuned config (issue 16): on Tiny Shakespeare,
``lmforge train --input input.txt --minutes N`` should land within 0.05 nats of
``configs/shakespeare-char.toml`` trained for the same N minutes.

Trains both, one after the other (each alone on the machine), and prints what each chose and
reached. ``--from-runs A B`` reads two finished run directories instead (hand-tuned first).

    python bench/budget.py [--minutes 20] [--from-runs RUN_DIR RUN_DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/tokenizer.py shadows ours

from lm.config import load_run_config, run_config_from_dict  # noqa: E402
from lm.training.budget import plan  # noqa: E402
from lm.training.trainer import train  # noqa: E402

REPO = _HERE.parent
CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
TOLERANCE = 0.05


def summary(run_dir: Path) -> dict:
    """What a finished run chose and reached, from its run directory."""
    config = json.loads((run_dir / "run_config.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    steps = [r for r in records if "loss" in r]
    m, t = config["model"], config["train"]
    shape = (f"{m['family']} {m.get('n_layer')}x{m.get('n_head', '')}x{m.get('n_embd')}, dropout {m.get('dropout', 0):g}, "
             f"{t['optimizer']} lr {t['lr']:g}, batch {t['batch_size']}x{t['seq_len']}")
    return {"model": shape, "steps": evals[-1]["step"] if evals else 0, "best": min(r["val_loss"] for r in evals),
            "tok_s": sum(r["tokens_per_s"] for r in steps[-20:]) / max(len(steps[-20:]), 1), "max_time": t["max_time"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--from-runs", nargs=2, type=Path, metavar="RUN_DIR", help="hand-tuned run, budgeted run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.from_runs:
        hand, budgeted = args.from_runs
    else:
        if not CORPUS.is_file():
            raise SystemExit(f"needs the corpus at {CORPUS}")
        work = Path(tempfile.mkdtemp(prefix="lmforge-budget-"))
        hand, budgeted = work / "hand-tuned", work / "budgeted"
        config = load_run_config(str(REPO / "configs" / "shakespeare-char.toml"),
                                 [f"train.out_dir={json.dumps(str(hand))}", f"train.max_time={args.minutes * 60}",
                                  f"data.train=[{json.dumps(str(CORPUS))}]", "train.progress=false"])
        train(config)
        planned = plan(CORPUS, args.minutes)
        planned["train"] |= {"out_dir": str(budgeted), "progress": False}
        train(run_config_from_dict(planned))
    rows = {"hand-tuned": summary(hand), "budgeted": summary(budgeted)}
    print(f"{'run':11} {'best val':>9} {'steps':>6} {'train s':>8} {'tok/s':>7}  model")
    for name, r in rows.items():
        print(f"{name:11} {r['best']:>9.4f} {r['steps']:>6} {r['max_time']:>8.0f} {r['tok_s']:>7,.0f}  {r['model']}")
    gap = rows["budgeted"]["best"] - rows["hand-tuned"]["best"]
    verdict = "ok" if gap <= TOLERANCE else "MISSED"
    print(f"\nbudgeted - hand-tuned: {gap:+.4f} nats (target <= +{TOLERANCE}: {verdict})")


if __name__ == "__main__":
    main()
