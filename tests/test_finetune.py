"""Fine-tuning (``train.init_from`` / ``--init-from``) and samples while training.

A checkpoint trained on one text is trained further on another: its weights, architecture and
tokenizer carry over (conflicting config values are errors naming the key), text its tokenizer
never saw still trains and is reported, the loss on the new text falls below the checkpoint's,
and the result loads and serves. Each evaluation writes a greedy and a seeded sample, which the
saved weights reproduce."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from test_service_helpers import client_for, test_settings

from lm.checkpoint import load_checkpoint, read_config
from lm.cli import main
from lm.config import run_config_from_dict
from lm.decoding.params import GenerationParams
from lm.pipeline import Pipeline
from lm.training.samples import NEW_TOKENS
from lm.training.trainer import Trainer, train

WORDS = ["the", "king", "and", "queen", "of", "the", "land", "spoke", "to", "their", "people", "in", "the", "hall", "of", "stone"]
NEW_WORDS = ["über", "café", "naïve", "façade", "jalapeño", "déjà", "vu", "the", "king", "said"]  # characters A never had
MODELS = {
    "transformer": {"family": "transformer", "block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32},
    "rnn": {"family": "rnn", "cell": "lstm", "n_embd": 32, "n_hidden": 48, "n_layer": 1, "dropout": 0.0},
}


def corpus(path: Path, words: list[str], seed: int, lines: int = 300) -> Path:
    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(lines)) + "\n",
                    encoding="utf-8")
    return path


def config(data: Path, out: Path, model: dict, **train_kw: object) -> dict:
    train_cfg = {"out_dir": str(out), "batch_size": 16, "seq_len": 32, "max_steps": 80, "eval_every": 40,
                 "lr": 1e-2, "warmup_steps": 5, "progress": False, "log_every": 5, "precision": "fp32", "threads": 1}
    train_cfg.update(train_kw)
    return {"data": {"train": [str(data)], "valid_fraction": 0.1}, "tokenizer": {"kind": "char"},
            "model": model, "train": train_cfg}


def write_toml(path: Path, cfg: dict) -> Path:
    lines = []
    for table, values in cfg.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module", params=list(MODELS))
def source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """A model trained on text A, and a text B with characters A never had."""
    root = tmp_path_factory.mktemp(f"ft-{request.param}")
    a = corpus(root / "a.txt", WORDS, 0)
    train(run_config_from_dict(config(a, root / "run-a", MODELS[request.param])))
    return request.param, root / "run-a", corpus(root / "b.txt", NEW_WORDS, 1)


def mean_loss(path: Path, text: str) -> float:
    [result] = Pipeline.from_checkpoint(path, device="cpu").score([text])
    return result.nll / result.tokens


def test_fine_tuning_starts_from_the_checkpoint_and_learns_the_new_text(source, tmp_path: Path) -> None:  # noqa: ANN001
    family, run_a, b = source
    held_out = "\n".join(b.read_text(encoding="utf-8").splitlines()[-30:]) + "\n"
    cfg = config(b, tmp_path / "run-b", {}, max_steps=40, eval_every=20)
    result = train(run_config_from_dict({**cfg, "train": {**cfg["train"], "init_from": str(run_a)}}))
    run_b = tmp_path / "run-b"
    # the checkpoint's tokenizer and architecture, not new ones
    assert (run_b / "tokenizer" / "tokenizer.json").read_text() == (run_a / "tokenizer" / "tokenizer.json").read_text()
    assert read_config(run_b / "best")[0] == read_config(run_a / "best")[0]
    # it starts from the trained weights, exactly
    fresh_cfg = config(b, tmp_path / "again", {}, max_steps=1)
    trainer = Trainer(run_config_from_dict({**fresh_cfg, "train": {**fresh_cfg["train"], "init_from": str(run_a)}}))
    trained, _, _ = load_checkpoint(run_a, device="cpu")
    mine = trainer.model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in trained.state_dict().items())
    assert result.steps == 40
    # and learned the new text: lower loss on B's held-out lines than the checkpoint it came from
    assert mean_loss(run_b, held_out) < mean_loss(run_a, held_out) - 0.1
    # the share of B the tokenizer had no piece for (é, ü, ç...: byte tokens) is reported
    meta = read_config(run_b / "best")[1]["training"]
    seen = set((run_a.parent / "a.txt").read_text(encoding="utf-8"))
    text = b.read_text(encoding="utf-8")
    spelled = [len(c.encode()) if c not in seen else 0 for c in text]  # byte tokens per character
    expected = sum(spelled) / sum(n or 1 for n in spelled)
    assert meta["fallback_fraction"] == pytest.approx(expected, abs=0.02) and expected > 0.05
    assert meta["run"]["train"]["init_from"] == str(run_a)
    # and it serves
    with client_for(test_settings(tmp_path, models=["run-b"])) as client:
        r = client.post("/v1/generate", json={"prompt": "the ", "max_new_tokens": 8})
        assert r.status_code == 200, r.text


def test_fine_tuning_keeps_the_architecture_and_tokenizer(source, tmp_path: Path,  # noqa: ANN001
                                                         capsys: pytest.CaptureFixture) -> None:
    family, run_a, b = source
    key = "n_layer"
    cfg = config(b, tmp_path / "x", {key: 3}, max_steps=2)
    assert main(["train", "--config", str(write_toml(tmp_path / "c.toml", cfg)), "--init-from", str(run_a)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"model.{key} = 3 conflicts" in err
    cfg = {**config(b, tmp_path / "x", {}, max_steps=2), "tokenizer": {"kind": "bpe", "vocab_size": 300}}
    assert main(["train", "--config", str(write_toml(tmp_path / "c.toml", cfg)), "--init-from", str(run_a)]) == 2
    assert "tokenizer.kind = 'bpe'" in capsys.readouterr().err
    assert main(["train", "--config", str(write_toml(tmp_path / "c.toml", config(b, tmp_path / "x", {}))),
                 "--init-from", str(tmp_path / "nowhere")]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # the dropouts shape training, not the weights: they may change
    dropout = {"dropout": 0.1}
    cfg = config(b, tmp_path / "ok", dropout, max_steps=2, eval_every=2)
    assert main(["train", "--config", str(write_toml(tmp_path / "c.toml", cfg)), "--init-from", str(run_a)]) == 0
    assert read_config(tmp_path / "ok" / "best")[0].dropout == 0.1
    # a fine-tuning run resumes like any run
    assert main(["train", "--resume", str(tmp_path / "ok"), "--set", "train.max_steps=4"]) == 0
    assert (tmp_path / "ok" / "latest").read_text().strip() == "step-00000004"
    assert main(["train", "--resume", str(tmp_path / "ok"), "--init-from", str(run_a)]) == 2
    assert "give one" in capsys.readouterr().err


def test_a_fine_tuned_model_keeps_its_chat_template_through_resume(source, tmp_path: Path) -> None:  # noqa: ANN001
    from lm.chat_template import ChatTemplate
    from lm.checkpoint import read_chat_template

    _, run_a, b = source
    (tmp_path / "t.jinja").write_text("{% for m in messages %}Q: {{ m.content }}\n{% endfor %}A:", encoding="utf-8")
    assert main(["export", str(run_a), str(tmp_path / "chat"), "--chat-template", str(tmp_path / "t.jinja"),
                 "--chat-stop", "\nQ:"]) == 0
    cfg = config(b, tmp_path / "run", {}, max_steps=4, eval_every=2)
    train(run_config_from_dict({**cfg, "train": {**cfg["train"], "init_from": str(tmp_path / "chat")}}))
    want = ChatTemplate("{% for m in messages %}Q: {{ m.content }}\n{% endfor %}A:", ("\nQ:",))
    assert read_chat_template(tmp_path / "run" / "best") == want
    assert main(["train", "--resume", str(tmp_path / "run"), "--set", "train.max_steps=6"]) == 0
    assert read_chat_template(tmp_path / "run" / "step-00000006") == want


def test_each_evaluation_writes_samples_the_saved_weights_reproduce(tmp_path: Path) -> None:
    a = corpus(tmp_path / "a.txt", WORDS, 0)
    result = train(run_config_from_dict(config(a, tmp_path / "run", MODELS["transformer"], max_steps=40,
                                               eval_every=20)))
    evals = [r for r in result.history if "val_loss" in r]
    assert [r["step"] for r in evals] == [20, 40] and all("sample" in r and "sample_greedy" in r for r in evals)
    assert evals[0]["sample_greedy"] != evals[1]["sample_greedy"]  # the model learned in between
    on_disk = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["sample"] for r in on_disk if "sample" in r] == [r["sample"] for r in evals]
    last = evals[-1]
    pipe = Pipeline.from_checkpoint(tmp_path / "run" / "step-00000040", device="cpu")
    [[greedy]] = pipe.generate([last["sample_prompt"]], GenerationParams(max_new_tokens=NEW_TOKENS["char"]))
    assert greedy.text == last["sample_greedy"]
    quiet = train(run_config_from_dict(config(a, tmp_path / "quiet", MODELS["transformer"], max_steps=4,
                                              eval_every=2, samples=False)))
    assert not any("sample" in r for r in quiet.history)
