"""What a user sees when a command cannot do what it was asked: one line naming the problem on
stderr and exit status 2, never a traceback (issue: the first hour of a new user). Each case
runs ``lmforge`` in a subprocess, as a user would, so what is checked is the real output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lm.checkpoint import save_checkpoint
from lm.config import TransformerConfig
from lm.models import build_model
from tokenizer import CharTokenizer

TEXT = "the cat sat on the mat\n" * 20


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = CharTokenizer(sorted(set(TEXT)))
    torch.manual_seed(0)
    model = build_model(TransformerConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "char", model.eval(), tok)


def lmforge(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "lm.cli", *args], input=stdin, capture_output=True,
                          env=env, timeout=120, check=False)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The run failed with status 2 and a single ``lmforge CMD: error: ...`` line saying ``needles``."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_score_input_that_is_not_utf8(ckpt: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff\xfe def\n")
    one_line_error(lmforge("score", str(ckpt), "--input", str(bad)), str(bad), "not valid UTF-8", "offset 3")
    one_line_error(lmforge("score", str(ckpt), "--input", "-", stdin=b"a\xffb"), "standard input", "offset 1")


def test_score_input_that_is_missing_or_a_directory(ckpt: Path, tmp_path: Path) -> None:
    line = one_line_error(lmforge("score", str(ckpt), "--input", str(tmp_path / "nope.txt")), "nope.txt", "not found")
    assert "Errno" not in line
    one_line_error(lmforge("score", str(ckpt), "--input", str(tmp_path)), "is a directory")


def test_device_that_this_torch_cannot_use(ckpt: Path) -> None:
    if not torch.cuda.is_available():
        proc = lmforge("generate", str(ckpt), "--prompt", "the", "--device", "cuda")
        one_line_error(proc, "device 'cuda'", "use cpu")
    one_line_error(lmforge("generate", str(ckpt), "--prompt", "the", "--device", "gpu"), "not a device name")
    if not torch.backends.mps.is_available():
        one_line_error(lmforge("score", str(ckpt), "--input", "-", "--device", "mps", stdin=b"the"), "MPS")


def test_score_json_of_empty_input_is_valid_json(ckpt: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = lmforge("score", str(ckpt), "--input", str(empty), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "NaN" not in proc.stdout
    total = json.loads(proc.stdout)["total"]
    assert total["tokens"] == 0 and total["perplexity"] is None and total["nll_per_token"] is None


@pytest.mark.parametrize("extra", [["--stream"], ["--json", "--num-return-sequences", "3"]])
def test_output_into_a_closed_pipe_is_quiet(ckpt: Path, extra: list[str]) -> None:
    """``lmforge generate ... | head -c 20``: the reader leaves early; no traceback."""
    cmd = [sys.executable, "-m", "lm.cli", "generate", str(ckpt), "--prompt", "the", "--max-new-tokens", "400",
           "--strategy", "sample", *extra]
    shell = " ".join(f"'{c}'" for c in cmd) + " | head -c 20 >/dev/null; echo ${PIPESTATUS[0]} >&2"
    proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] in ("0", "1")
