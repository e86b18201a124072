"""torchrun: a 2-process gloo run (DDP, or FSDP for the Transformer) equals a 1-process run with the
same global batch, and its checkpoint resumes in 1 process exactly where the 1-process run would be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def write_config(path: Path, corpus: Path, out: Path, family: str) -> None:
    model = (
        '[model]\nfamily = "transformer"\nblock_size = 16\nn_layer = 2\nn_head = 2\nn_embd = 16\n'
        if family.startswith("transformer")
        else '[model]\nfamily = "rnn"\ncell = "lstm"\nn_embd = 16\nn_hidden = 16\nn_layer = 1\ndropout = 0.0\n'
    )
    fsdp = family.endswith("fsdp")  # also: gradient accumulation and a test split (evaluated sharded)
    test = f'test = ["{corpus}"]\n' if fsdp else ""
    path.write_text(
        f'[data]\ntrain = ["{corpus}"]\nvalid_fraction = 0.1\n{test}[tokenizer]\nkind = "char"\n{model}'
        f'[train]\nout_dir = "{out}"\nbatch_size = 8\nseq_len = 16\nmax_steps = 6\neval_every = 3\n'
        'log_every = 1\nprogress = false\nprecision = "fp32"\nlr = 3e-3\nwarmup_steps = 0\nthreads = 1\n'
        f'fsdp = {"true" if fsdp else "false"}\ngrad_accum = {2 if fsdp else 1}\n'
    )


def run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]


def losses(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", ["transformer", "lstm", "transformer-fsdp"])
def test_two_processes_match_one(family: str, small_corpus: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    write_config(tmp_path / "one.toml", small_corpus, one, family)
    write_config(tmp_path / "two.toml", small_corpus, two, family)
    run([sys.executable, "-m", "lm.cli", "train", "--config", str(tmp_path / "one.toml")], tmp_path)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "lm.cli", "train", "--config", str(tmp_path / "two.toml")], tmp_path)
    a, b = losses(one), losses(two)
    assert [r["step"] for r in a] == [r["step"] for r in b]  # rank 1 wrote no duplicate records
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "val_loss", "test_loss"):
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], abs=2e-4), (ra, rb)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    if family.endswith("fsdp"):
        assert any("test_loss" in r for r in b)
    # a 2-process checkpoint resumes in 1 process (an FSDP one: sharded again, in 2), and continues
    # as the 1-process run does
    resume = ["-m", "lm.cli", "train", "--set", "train.max_steps=8", "--resume"]
    run([sys.executable, *resume, str(one)], tmp_path)
    if family.endswith("fsdp"):
        run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *resume, str(two)],
            tmp_path)
    else:
        run([sys.executable, *resume, str(two)], tmp_path)
    assert (two / "latest").read_text().strip() == "step-00000008"
    a, b = losses(one), losses(two)
    resumed = [(ra, rb) for ra, rb in zip(a, b, strict=True) if ra["step"] > 6 and "loss" in ra]
    assert [ra["step"] for ra, _ in resumed] == [7, 8]
    for ra, rb in resumed:
        assert ra["loss"] == pytest.approx(rb["loss"], abs=2e-4), (ra, rb)
