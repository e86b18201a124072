"""The README's two transformers sections run as written: "Serve a model you already have" on a
GPT-2 checkpoint this test builds where the README's ``~/models/gpt2`` would be, and "Take your
model to transformers" on the shipped char model."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_hf_import import byte_level_tokenizer  # noqa: E402
from test_service_helpers import client_for, test_settings  # noqa: E402

from lm.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def section_commands(title: str) -> list[list[str]]:
    """The shell words of each command in the first bash block under ``### title``."""
    section = README.split(f"### {title}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert block is not None, title
    return [shlex.split(line) for line in block.group(1).replace("\\\n", " ").splitlines() if line.strip()]


def test_serve_a_model_you_already_have_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    home = tmp_path / "home"
    source = home / "models" / "gpt2"
    source.mkdir(parents=True)
    vocab = byte_level_tokenizer(source)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(source)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    commands = section_commands("Serve a model you already have")
    assert [c[:2] for c in commands] == [["lmforge", "import"], ["lmforge", "generate"], ["lmforge", "serve"]]
    for words in commands[:2]:  # the shell expands ~
        assert main([str(Path(w).expanduser()) if w.startswith("~") else w for w in words[1:]]) == 0, words
    assert "The meaning of life is" not in capsys.readouterr().err
    serve = commands[2]
    checkpoints = Path(serve[serve.index("--checkpoints") + 1])
    with client_for(test_settings(checkpoints)) as client:
        r = client.post("/v1/completions", json={"model": "gpt2", "prompt": "The meaning of life is",
                                                 "max_tokens": 8, "use_beam_search": True, "n": 1, "best_of": 4,
                                                 "temperature": 0})
        assert r.status_code == 200, r.text
        r = client.post("/v1/perplexity", json={"model": "gpt2", "text": "the quick brown fox"})
        assert r.status_code == 200, r.text


def test_take_your_model_to_transformers_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "checkpoints").symlink_to(REPO / "checkpoints")
    monkeypatch.chdir(tmp_path)
    export, python = section_commands("Take your model to transformers")
    assert export[:2] == ["lmforge", "export"] and python[:2] == ["python", "-c"]
    assert main(export[1:]) == 0
    out = subprocess.run([sys.executable, *python[1:]], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("\nROMEO:") and len(text.strip()) > 40, text  # a continuation, printed by transformers
