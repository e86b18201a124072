"""Each shipped checkpoint loads, is self-consistent, and scores its validation data as documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lm.checkpoint import load_checkpoint
from lm.score import score_texts

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPO / "checkpoints"
SHARED = REPO.parent / "shared" / "data"


def spot_text(name: str) -> str:
    """The validation sample each checkpoint's README row is measured on."""
    if name.startswith("shakespeare"):
        text = (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
        return text[int(len(text) * 0.9) :][:1000]  # first 1,000 characters of nanoGPT's val split
    if name.startswith("ptb"):
        lines = (SHARED / "ptb" / "ptb.valid.txt").read_text(encoding="utf-8").splitlines(keepends=True)
        return "".join(lines[:40])  # first 40 sentences of the validation split
    raise AssertionError(f"no validation sample defined for {name}")


def documented_figures() -> dict[str, float]:
    """``name -> nats/token`` from the spot-check table in checkpoints/README.md."""
    text = (CHECKPOINTS / "README.md").read_text(encoding="utf-8")
    return {m[0]: float(m[1]) for m in re.findall(r"^\| `([\w.-]+)` \| spot check \| ([0-9.]+) \|", text, re.M)}


SHIPPED = sorted(p.name for p in CHECKPOINTS.iterdir() if (p / "config.json").is_file())


def test_at_least_the_default_checkpoint_ships() -> None:
    assert "shakespeare-char" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_is_consistent_and_scores_as_documented(name: str) -> None:
    model, tok, config = load_checkpoint(CHECKPOINTS / name, device="cpu")
    assert tok.vocab_size == config.vocab_size
    emb = next(m for m in model.modules() if isinstance(m, torch.nn.Embedding))
    assert emb.weight.shape[0] == tok.vocab_size
    assert (CHECKPOINTS / name / "model.safetensors").stat().st_size < 25 * 2**20
    if not SHARED.is_dir():
        pytest.skip(f"validation data not found at {SHARED}")
    figures = documented_figures()
    assert name in figures, f"checkpoints/README.md has no spot-check row for {name}"
    result = score_texts(model, tok, [spot_text(name)])[0]
    assert result.nll / result.tokens == pytest.approx(figures[name], rel=0.05)
