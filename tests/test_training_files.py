"""What ``--resume`` and checkpoint writing do with damaged or hostile run files: a ``latest``
that points outside the run, garbage in it, a truncated weights file, a full disk. Each is one
line naming the file (exit 2 at the CLI), and the previous checkpoint stays intact."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lm.checkpoint import CheckpointError, latest_checkpoint, resolve_checkpoint_dir
from lm.cli import main
from lm.config import run_config_from_dict
from lm.training.trainer import Trainer, TrainingError, train


def run_config(corpus: Path, out: Path, steps: int = 4):  # noqa: ANN201
    return run_config_from_dict({
        "data": {"train": [str(corpus)], "valid_fraction": 0.1},
        "tokenizer": {"kind": "char"},
        "model": {"family": "rnn", "cell": "lstm", "n_embd": 16, "n_hidden": 16, "n_layer": 1},
        "train": {"out_dir": str(out), "batch_size": 4, "seq_len": 8, "max_steps": steps, "eval_every": 2,
                  "progress": False, "precision": "fp32", "threads": 1},
    })


@pytest.fixture
def run_dir(small_corpus: Path, tmp_path: Path) -> Path:
    train(run_config(small_corpus, tmp_path / "run"))
    return tmp_path / "run"


@pytest.mark.parametrize("pointer", ["../other/step-00000004", "ABSOLUTE", "", "garbage\x00\n", "step-4",
                                     "step-00000004/../../other/step-00000004"])
def test_a_latest_outside_the_run_or_garbage_is_refused(run_dir: Path, tmp_path: Path, pointer: str,
                                                        capsys: pytest.CaptureFixture) -> None:
    outside = tmp_path / "other" / "step-00000004"  # a complete checkpoint, elsewhere
    shutil.copytree(run_dir / "step-00000004", outside)
    (run_dir / "latest").write_text(str(outside) if pointer == "ABSOLUTE" else pointer)
    with pytest.raises(CheckpointError, match=r"latest: corrupt pointer"):
        latest_checkpoint(run_dir)
    shutil.rmtree(run_dir / "best")  # so that serving the run reads latest too
    with pytest.raises(CheckpointError, match=r"latest: corrupt pointer"):
        resolve_checkpoint_dir(run_dir)
    assert main(["train", "--resume", str(run_dir), "--set", "train.max_steps=6"]) == 2
    err = capsys.readouterr().err
    assert "latest: corrupt pointer" in err and "Traceback" not in err and err.count("\n") == 1


def test_a_truncated_weights_file_names_it(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    weights = run_dir / "step-00000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["train", "--resume", str(run_dir), "--set", "train.max_steps=6"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors: not a valid safetensors file" in err and err.count("\n") == 1


def test_a_full_disk_is_the_documented_message_and_keeps_the_previous(
    small_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    train(run_config(small_corpus, out, steps=2))
    assert (out / "latest").read_text().strip() == "step-00000002"

    def disk_full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1024 vs 512")

    monkeypatch.setattr(torch, "save", disk_full)
    trainer = Trainer(run_config(small_corpus, out, steps=4), resume=True)
    with pytest.raises(TrainingError, match=r"could not save the checkpoint for step 4 .*trainer_state\.pt: "
                                            r".*the previous checkpoint step-00000002 is intact"):
        trainer.fit()
    assert (out / "latest").read_text().strip() == "step-00000002"
    assert (out / "step-00000002" / "trainer_state.pt").is_file()
