"""Helpers shared by the service tests (tiny checkpoints, settings, clients), and tests of the
parts that need no HTTP: settings from the environment, checkpoint discovery."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from lm.checkpoint import save_checkpoint
from lm.config import RNNConfig, TransformerConfig
from lm.models import build_model
from service.app import create_app
from service.registry import discover
from service.settings import Settings
from tokenizer import train_tokenizer

CORPUS = "To be, or not to be, that is the question.\nROMEO: But soft, what light through yonder window breaks?\n" * 4


def make_checkpoint(directory: Path, *, family: str = "transformer", seed: int = 0) -> Path:
    """A random tiny model with a char tokenizer: fast to load, deterministic to decode."""
    corpus = directory.parent / f".{directory.name}-corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    tok = train_tokenizer("char", [corpus], None)
    torch.manual_seed(seed)
    if family == "transformer":
        config: Any = TransformerConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)
    else:
        config = RNNConfig(vocab_size=tok.vocab_size, cell="gru", n_embd=16, n_hidden=16, n_layer=1,
                           dropout=0.0, emb_dropout=0.0)
    corpus.unlink()
    return save_checkpoint(directory, build_model(config), tok)


def make_checkpoints(root: Path) -> Path:
    """``root`` with two models: ``tiny`` (Transformer) and ``tiny-gru``."""
    make_checkpoint(root / "tiny")
    make_checkpoint(root / "tiny-gru", family="rnn", seed=1)
    return root


def test_settings(checkpoints: Path, **overrides: Any) -> Settings:
    """Settings for tests: CPU, the given checkpoints, anything else overridden. Torch keeps its
    thread count, which is process-wide and shared with the rest of the test session."""
    return Settings(checkpoints=checkpoints, device="cpu", torch_threads=torch.get_num_threads(), **overrides)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@contextlib.contextmanager
def client_for(settings: Settings, **kwargs: Any) -> Iterator[TestClient]:
    """A TestClient with the lifespan run (models loaded, workers started and stopped)."""
    with TestClient(create_app(settings), **kwargs) as client:
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sse_events(text: str) -> list[tuple[str | None, Any]]:
    """Parse a Server-Sent Events body into ``(event, data)`` pairs (data JSON-decoded)."""
    out = []
    for block in text.strip().split("\n\n"):
        event, data = None, []
        for line in block.splitlines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
        payload = "\n".join(data)
        out.append((event, payload if payload == "[DONE]" else json.loads(payload)))
    return out


# -- tests of settings and discovery ----------------------------------------------------------


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LMFORGE_CHECKPOINTS", str(tmp_path))
    monkeypatch.setenv("LMFORGE_MODELS", "a,b")
    monkeypatch.setenv("LMFORGE_MAX_NEW_TOKENS", "7")
    monkeypatch.setenv("LMFORGE_API_KEY", "sekrit")
    s = Settings()
    assert (s.checkpoints, s.models, s.max_new_tokens) == (tmp_path, ["a", "b"], 7)
    assert s.api_key is not None and s.api_key.get_secret_value() == "sekrit"
    assert "sekrit" not in repr(s)
    assert (s.host, s.port) == ("127.0.0.1", 8000)


def test_default_checkpoints_dir_is_the_shipped_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMFORGE_CHECKPOINTS", raising=False)
    assert Settings().checkpoints == Path(__file__).resolve().parents[1] / "checkpoints"


def test_discover_skips_hidden_and_incomplete_dirs(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "good")
    (tmp_path / ".good.tmp-123").mkdir()
    (tmp_path / ".good.tmp-123" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    assert discover(tmp_path, None) == {"good": tmp_path / "good"}
    assert discover(tmp_path, ["good", "missing"]) == {"good": tmp_path / "good"}
    assert discover(tmp_path / "good", None) == {"good": tmp_path / "good"}
    assert discover(tmp_path / "nope", None) == {}


def test_serve_flags_mirror_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from lm.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--checkpoints", "--host", "--port", "--device", "--models", "--max-new-tokens", "--max-queue",
                 "--request-timeout-s", "--log-prompts"):
        assert flag in out
    assert "--api-key" not in out  # secrets stay out of command lines (visible in ps)


def test_serve_bad_flag_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    from lm.cli import main

    assert main(["serve", "--port", "not-a-port"]) == 2
    err = capsys.readouterr().err
    assert "--port" in err and "Traceback" not in err


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """``lmforge serve`` up to the server: the settings it would serve with, uvicorn not started
    (and no checkpoint loaded: the registry pretends one model loaded)."""
    import uvicorn

    import service.app
    from service.registry import ModelRegistry

    seen: list[Settings] = []
    monkeypatch.setattr(service.app, "create_app", lambda settings, **kw: seen.append(settings) or object())
    monkeypatch.setattr(ModelRegistry, "load_all", lambda self: self.models.update(stub=None))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    for name in Settings.model_fields:
        monkeypatch.delenv(f"LMFORGE_{name.upper()}", raising=False)
    return seen


@pytest.mark.parametrize("models", [["a", "b"], ["a,b"], ["a", "--models", "b"], ['["a","b"]']])
def test_serve_list_flag_forms(served: list[Settings], models: list[str]) -> None:
    from lm.cli import main

    assert main(["serve", "--models", *models]) == 0
    assert served[-1].models == ["a", "b"]


def test_serve_flags_bool_kebab_and_over_the_environment(served: list[Settings], monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    from lm.cli import main

    monkeypatch.setenv("LMFORGE_LOG_PROMPTS", "true")
    monkeypatch.setenv("LMFORGE_MAX_QUEUE", "5")
    monkeypatch.setenv("LMFORGE_PORT", "9001")
    monkeypatch.setenv("LMFORGE_API_KEY", "from-env")
    assert main(["serve", "--no-log-prompts", "--port", "9002", "--max-new-tokens", "7", "--dtype", "bf16",
                 "--checkpoints", str(tmp_path), "--request-timeout-s", "1.5"]) == 0
    s = served[-1]
    assert (s.log_prompts, s.port, s.max_queue, s.max_new_tokens, s.dtype) == (False, 9002, 5, 7, "bf16")
    assert (s.checkpoints, s.request_timeout_s, s.models) == (tmp_path, 1.5, None)
    assert s.api_key is not None and s.api_key.get_secret_value() == "from-env"
    monkeypatch.delenv("LMFORGE_LOG_PROMPTS")
    assert main(["serve", "--log-prompts"]) == 0 and served[-1].log_prompts is True
    assert main(["serve"]) == 0 and served[-1].log_prompts is False and served[-1].port == 9001


def test_serve_refuses_the_key_as_a_flag(served: list[Settings], capsys: pytest.CaptureFixture[str]) -> None:
    from lm.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--api-key", "visible-in-ps"])
    assert exit_.value.code == 2 and "--api-key" in capsys.readouterr().err
    assert not served


@pytest.mark.parametrize(("argv", "flag"), [(["--max-queue", "0"], "--max-queue"),
                                            (["--dtype", "fp64"], "--dtype"),
                                            (["--request-timeout-s", "soon"], "--request-timeout-s"),
                                            (["--models", '["a'], "models")])
def test_serve_bad_values_are_one_line_errors(served: list[Settings], capsys: pytest.CaptureFixture[str],
                                              argv: list[str], flag: str) -> None:
    from lm.cli import main

    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not served
