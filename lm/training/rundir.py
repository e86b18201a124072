"""A training run's directory: its recorded config, crash recovery, and the loss plot.

``run_config.json`` records the resolved configuration (what ``--resume`` reads back),
``metrics.jsonl`` the training curve, ``loss.png`` its picture; checkpoints (``step-*/``,
``best/``, the ``latest`` pointer) are written by ``lm.checkpoint``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, TextIO

from lm.checkpoint import CheckpointError
from lm.config import RunConfig, run_config_from_dict, to_dict
from lm.training.errors import TrainingError

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "run_config.json"
METRICS_FILE = "metrics.jsonl"


def recover_run_dir(run_dir: Path) -> None:
    """Tidy what a crash can leave behind: half-written temporaries and a ``best/`` mid-replace."""
    for tmp in run_dir.glob(".*.tmp-*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    for old in sorted(run_dir.glob(".*.old-*")):
        target = run_dir / old.name[1:].split(".old-")[0]
        if not target.exists():
            old.rename(target)  # the crash came between the two renames: restore the old copy
            log.warning("restored %s from an interrupted replace", target)
        else:
            shutil.rmtree(old, ignore_errors=True)


def check_tokenizer_unchanged(run_dir: Path, run: RunConfig) -> None:
    """A fresh run into a directory that already holds a tokenizer reuses it only when the
    ``[tokenizer]`` table is the one it was made from; anything else would train on ids that
    mean something else than the config says."""
    if not (run_dir / "tokenizer" / "tokenizer.json").is_file():
        return
    how = (f"use another train.out_dir, delete {run_dir / 'tokenizer'} to train a new one, "
           f"or continue the old run with --resume {run_dir}")
    path = run_dir / RUN_CONFIG_FILE
    try:
        old = json.loads(path.read_text()).get("tokenizer")
    except (OSError, ValueError, AttributeError):
        raise TrainingError(f"{run_dir} holds a tokenizer but no readable {RUN_CONFIG_FILE} saying what it was "
                            f"trained with; {how}") from None
    new = to_dict(run.tokenizer)
    if old != new:
        keys = sorted(k for k in set(old or {}) | set(new) if (old or {}).get(k) != new.get(k))
        raise TrainingError(f"{run_dir} holds a tokenizer made with a different [tokenizer] table "
                            f"(differs in {', '.join('tokenizer.' + k for k in keys)}); {how}")


def run_to_dict(run: RunConfig) -> dict[str, Any]:
    return {"data": to_dict(run.data), "tokenizer": to_dict(run.tokenizer), "model": dict(run.model),
            "train": to_dict(run.train)}


def load_run_dir_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The configuration a run directory was started with (for ``--resume``)."""
    path = Path(run_dir) / RUN_CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no {RUN_CONFIG_FILE})")
    data = json.loads(path.read_text())
    for table, values in (overrides or {}).items():
        data.setdefault(table, {}).update(values)
    return run_config_from_dict(data)


def open_metrics(run_dir: Path, resume: bool, step: int) -> TextIO:
    """``metrics.jsonl`` opened for appending: a fresh run starts it empty, a resumed one keeps
    the records up to the step it resumes at (later ones belong to the abandoned future)."""
    path = run_dir / METRICS_FILE
    if resume and path.is_file():
        lines = path.read_text().splitlines()
        kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
        path.write_text("".join(k + "\n" for k in kept))
    elif not resume and path.exists():
        path.unlink()
    return open(path, "a", encoding="utf-8")  # noqa: SIM115 -- the training loop closes it


def write_loss_plot(run_dir: Path) -> Path | None:
    """Plot training and validation loss from ``metrics.jsonl`` to ``loss.png`` (with the
    ``plot`` extra, matplotlib; without it the plot is skipped and the log says so)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    try:
        import matplotlib
    except ImportError:
        log.info("loss.png not drawn: matplotlib is not installed (pip install 'lmforge[plot]'); "
                 "the figures are in %s", path)
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            train.append((rec["step"], rec["loss"]))
        if "val_loss" in rec:
            val.append((rec["step"], rec["val_loss"]))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val, strict=True), label="validation", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out)
    plt.close(fig)
    return out
