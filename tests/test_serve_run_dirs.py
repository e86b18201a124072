"""``lmforge serve --checkpoints`` on what training writes: a run directory is one model named
after the run (its ``best/``, else ``latest``), whether it is the directory given or one of its
subdirectories."""

from __future__ import annotations

from pathlib import Path

from test_service_helpers import CORPUS, client_for, make_checkpoint, test_settings

from lm.config import run_config_from_dict
from lm.training.trainer import train
from service.registry import discover


def fake_run(directory: Path, *, best: bool) -> Path:
    """A run directory as the trainer leaves it: run_config.json, a step checkpoint, the
    ``latest`` pointer and, if ``best``, ``best/``."""
    directory.mkdir(parents=True)
    make_checkpoint(directory / "step-00000004")
    (directory / "latest").write_text("step-00000004\n")
    (directory / "run_config.json").write_text("{}")
    if best:
        make_checkpoint(directory / "best")
    return directory


def test_run_directories_are_models_named_after_the_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    fake_run(runs / "with-best", best=True)
    fake_run(runs / "no-best-yet", best=False)
    make_checkpoint(runs / "plain")
    (runs / "broken").mkdir()
    (runs / "broken" / "latest").write_text("step-00000009\n")  # points at nothing
    assert discover(runs, None) == {
        "no-best-yet": runs / "no-best-yet" / "step-00000004",
        "plain": runs / "plain",
        "with-best": runs / "with-best" / "best",
    }
    assert discover(runs, ["with-best"]) == {"with-best": runs / "with-best" / "best"}
    # the run directory itself, or a checkpoint inside it: still named after the run
    assert discover(runs / "with-best", None) == {"with-best": runs / "with-best" / "best"}
    assert discover(runs / "with-best" / "best", None) == {"with-best": runs / "with-best" / "best"}
    assert discover(runs / "no-best-yet" / "step-00000004", None) == {
        "no-best-yet": runs / "no-best-yet" / "step-00000004"
    }
    assert discover(runs / "broken", None) == {}


def test_a_trained_run_is_served_under_its_name(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS * 4, encoding="utf-8")
    run = run_config_from_dict({
        "data": {"train": [str(corpus)], "valid_fraction": 0.2},
        "tokenizer": {"kind": "char"},
        "model": {"family": "transformer", "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
        "train": {"out_dir": str(tmp_path / "runs" / "tiny-run"), "batch_size": 4, "seq_len": 16,
                  "max_steps": 3, "eval_every": 3, "progress": False, "precision": "fp32"},
    })
    train(run)
    with client_for(test_settings(tmp_path / "runs")) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny-run"]
        r = client.post("/v1/generate", json={"model": "tiny-run", "prompt": "To be", "max_new_tokens": 4})
        assert r.status_code == 200, r.text


def test_serve_with_nothing_to_serve_exits_with_one_line(tmp_path: Path) -> None:
    """Nothing found, nothing loadable, or a wrong name: exit 2 at once, saying why, instead of
    a server that answers 503 to every request."""
    import subprocess
    import sys

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lm.cli", "serve", "--port", "0", *args],
                              capture_output=True, text=True, timeout=120, check=False)

    (tmp_path / "empty").mkdir()
    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad" / "x" / "config.json").write_text("{}")
    (tmp_path / "one").mkdir()
    make_checkpoint(tmp_path / "one" / "tiny")
    for args, says in (
        (["--checkpoints", str(tmp_path / "missing")], "no such checkpoints directory"),
        (["--checkpoints", str(tmp_path / "empty")], "nothing to serve"),
        (["--checkpoints", str(tmp_path / "bad")], "no model could be loaded"),
        (["--checkpoints", str(tmp_path / "one"), "--models", "other"], "no model named other"),
    ):
        proc = serve(*args)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("lmforge serve: error: ") and says in last, proc.stderr
