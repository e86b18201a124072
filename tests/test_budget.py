"""The budgeted run, ``lmforge train --input FILE --minutes N`` (``lm.training.budget``): the
rule picks the tokenizer by the corpus and the model by throughput measured here, the plan
trains and serves like any run, and bad arguments are one-line errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lm.cli import main
from lm.config import run_config_from_dict
from lm.training import budget


def fake_rates(monkeypatch: pytest.MonkeyPatch, tokens_per_s: float) -> list[int]:
    """Every candidate trains at ``tokens_per_s``; returns the sizes measured, in order."""
    measured: list[int] = []

    def measure(model_cfg: dict, vocab: int, train: dict, device: object, precision: str) -> tuple[int, float]:
        width = model_cfg.get("n_embd")
        measured.append(width)
        layers = model_cfg["n_layer"]
        return 12 * layers * width * width + vocab * width, tokens_per_s

    monkeypatch.setattr(budget, "_measure", measure)
    return measured


def test_rule_takes_the_largest_model_the_budget_feeds(monkeypatch: pytest.MonkeyPatch, small_corpus: Path) -> None:
    measured = fake_rates(monkeypatch, 22_000.0)  # 20 minutes: 26.4M tokens, 3.3M parameters at 8 a parameter
    cfg = budget.plan(small_corpus, 20, log=lambda _: None)
    assert cfg["tokenizer"]["kind"] == "char" and cfg["model"]["family"] == "transformer"
    assert cfg["model"]["n_embd"] == 256  # 4x4x256 (3.2M) fits, 6x6x288 (6.1M) does not
    assert measured == [64, 128, 192, 256, 288]  # stopped at the first that falls short
    assert cfg["train"]["lr"] == pytest.approx(2e-3 * (192 / 256) ** 0.5, rel=1e-4)
    assert 1190 < cfg["train"]["max_time"] <= 1200
    assert cfg["model"]["dropout"] == 0.2  # 24M tokens over this tiny corpus: many passes
    run_config_from_dict(cfg)  # a valid run config


def test_rule_small_budget_trains_the_smallest(monkeypatch: pytest.MonkeyPatch, small_corpus: Path) -> None:
    measured = fake_rates(monkeypatch, 100.0)
    cfg = budget.plan(small_corpus, 1, log=lambda _: None)
    assert cfg["model"]["n_embd"] == 64 and measured == [64]


def test_words_with_unk_train_an_lstm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "words.txt"
    path.write_text("the <unk> sat on the mat\n" * 2000)
    fake_rates(monkeypatch, 5000.0)
    cfg = budget.plan(path, 10, log=lambda _: None)
    assert cfg["tokenizer"]["kind"] == "word" and cfg["model"]["family"] == "rnn"
    assert cfg["data"]["batching"] == "sequential" and cfg["train"]["optimizer"] == "sgd"
    run_config_from_dict(cfg)


def test_budgeted_run_end_to_end(small_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["train", "--input", str(small_corpus), "--minutes", "0.05", "--set", f"train.out_dir={json.dumps(str(out))}",
                 "--set", "train.progress=false", "--set", "train.threads=1"]) == 0
    printed = capsys.readouterr().out
    assert "budget: training Transformer" in printed and "done:" in printed
    saved = json.loads((out / "run_config.json").read_text())
    assert saved["train"]["max_time"] <= 3.0 and saved["model"]["family"] == "transformer"
    assert (out / "best" / "model.safetensors").is_file()
    assert main(["generate", str(out), "--prompt", "the", "--max-new-tokens", "8"]) == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--input", "x.txt"], "--input FILE and --minutes N go together"),
    (["--minutes", "3"], "--input FILE and --minutes N go together"),
    (["--input", "missing.txt", "--minutes", "3"], "--input missing.txt: no such file"),
    (["--input", "{corpus}", "--minutes", "0"], "--minutes must be a positive number"),
    (["--input", "{corpus}", "--minutes", "3", "--config", "c.toml"], "--config cannot be combined"),
])
def test_budget_argument_errors(argv: list[str], message: str, small_corpus: Path,
                                capsys: pytest.CaptureFixture) -> None:
    argv = [a.replace("{corpus}", str(small_corpus)) for a in argv]
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
