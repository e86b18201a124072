"""Training: loss falls, overfitting, exact resume, checkpoints, precision, accumulation, config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lm.cli import main
from lm.config import ConfigError, load_run_config, run_config_from_dict
from lm.training.trainer import Trainer, TrainingError, train

RNN_CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def run_config(corpus: Path, out: Path, model: dict, **train_kw: object):
    train_cfg = {"out_dir": str(out), "batch_size": 8, "seq_len": 16, "max_steps": 30, "eval_every": 10,
                 "lr": 3e-3, "warmup_steps": 2, "progress": False, "log_every": 1, "precision": "fp32"}
    train_cfg.update(train_kw)
    return run_config_from_dict({
        "data": {"train": [str(corpus)], "valid_fraction": 0.1},
        "tokenizer": {"kind": "char"},
        "model": model,
        "train": train_cfg,
    })


TRANSFORMER = {"family": "transformer", "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16}


def losses(result) -> list[float]:  # noqa: ANN001
    return [r["loss"] for r in result.history if "loss" in r]


@pytest.mark.parametrize("cell", RNN_CELLS)
def test_loss_falls_rnn(cell: str, small_corpus: Path, tmp_path: Path) -> None:
    model = {"family": "rnn", "cell": cell, "n_embd": 16, "n_hidden": 32, "n_layer": 1, "dropout": 0.0}
    result = train(run_config(small_corpus, tmp_path, model, lr=1e-2, optimizer="adamw"))
    ls = losses(result)
    assert sum(ls[-5:]) / 5 < sum(ls[:5]) / 5 - 0.5


def test_loss_falls_transformer(small_corpus: Path, tmp_path: Path) -> None:
    result = train(run_config(small_corpus, tmp_path, TRANSFORMER))
    ls = losses(result)
    assert sum(ls[-5:]) / 5 < sum(ls[:5]) / 5 - 0.5
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert math.isfinite(result.best_val_loss)


def test_overfits_a_short_string(tmp_path: Path) -> None:
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    model = {"family": "transformer", "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 48}
    result = train(run_config(corpus, tmp_path / "run", model, max_steps=150, lr=1e-2, seq_len=32,
                              eval_every=150, weight_decay=0.0, warmup_steps=10))
    assert losses(result)[-1] < 0.1


@pytest.mark.parametrize("model", [TRANSFORMER, {"family": "rnn", "cell": "lstm", "n_embd": 16, "n_hidden": 16,
                                                 "n_layer": 2, "dropout": 0.3}], ids=["transformer", "lstm"])
def test_resume_equals_uninterrupted(model: dict, small_corpus: Path, tmp_path: Path) -> None:
    kw = {"max_steps": 24, "eval_every": 8, "grad_accum": 2}
    full = train(run_config(small_corpus, tmp_path / "full", {**model, "dropout": 0.2}, **kw))
    part = Trainer(run_config(small_corpus, tmp_path / "part", {**model, "dropout": 0.2}, **kw)).fit(until_step=8)
    assert part.steps == 8 and part.interrupted == "paused"
    resumed = Trainer(run_config(small_corpus, tmp_path / "part", {**model, "dropout": 0.2}, **kw), resume=True)
    assert resumed.step == 8
    if model["family"] == "rnn":
        assert resumed.rnn_state is not None  # the carried state came back
    rest = resumed.fit()
    assert losses(full)[8:] == losses(rest)
    a, _, _ = load_checkpoint(tmp_path / "full" / "step-00000024")
    b, _, _ = load_checkpoint(tmp_path / "part" / "step-00000024")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == list(range(1, 25))


def test_sequential_batching_carries_state(small_corpus: Path, tmp_path: Path) -> None:
    model = {"family": "rnn", "cell": "gru", "n_embd": 8, "n_hidden": 8, "n_layer": 1}
    t = Trainer(run_config(small_corpus, tmp_path, model, max_steps=3))
    assert t.sequential
    t.train_step()
    first = t.rnn_state
    assert first is not None and not first.h.requires_grad  # detached: truncated BPTT
    t.train_step()
    assert not torch.equal(first.h, t.rnn_state.h)


def test_checkpoint_round_trip_is_exact(small_corpus: Path, tmp_path: Path) -> None:
    result = train(run_config(small_corpus, tmp_path / "run", TRANSFORMER, max_steps=5, eval_every=5))
    model, tok, cfg = load_checkpoint(result.run_dir)
    save_checkpoint(tmp_path / "copy", model, tok)
    again, tok2, cfg2 = load_checkpoint(tmp_path / "copy")
    assert cfg == cfg2 and tok2.encode("First Citizen") == tok.encode("First Citizen")
    x = torch.tensor([tok.encode("First Citizen:")])
    torch.testing.assert_close(model(x)[0], again(x)[0], rtol=0, atol=0)
    half = save_checkpoint(tmp_path / "bf16", model, tok, dtype=torch.bfloat16)
    assert (half / "model.safetensors").stat().st_size < (tmp_path / "copy" / "model.safetensors").stat().st_size


def test_bf16_and_grad_accumulation_run_on_cpu(small_corpus: Path, tmp_path: Path) -> None:
    one = train(run_config(small_corpus, tmp_path / "a", TRANSFORMER, max_steps=6, eval_every=6))
    two = train(run_config(small_corpus, tmp_path / "b", TRANSFORMER, max_steps=6, eval_every=6, grad_accum=2))
    for x, y in zip(losses(one), losses(two), strict=True):
        assert x == pytest.approx(y, abs=1e-4)
    bf = train(run_config(small_corpus, tmp_path / "c", TRANSFORMER, max_steps=6, eval_every=6, precision="bf16"))
    assert losses(bf)[-1] == pytest.approx(losses(one)[-1], abs=0.1)


def test_fsdp_is_for_transformers_and_a_no_op_in_one_process(small_corpus: Path, tmp_path: Path) -> None:
    lstm = {"family": "rnn", "cell": "lstm", "n_embd": 16, "n_hidden": 16, "n_layer": 1}
    with pytest.raises(TrainingError, match="train.fsdp shards Transformers"):
        Trainer(run_config(small_corpus, tmp_path / "rnn", lstm, fsdp=True))
    plain = train(run_config(small_corpus, tmp_path / "a", TRANSFORMER, max_steps=4, eval_every=4))
    fsdp = train(run_config(small_corpus, tmp_path / "b", TRANSFORMER, max_steps=4, eval_every=4, fsdp=True))
    assert losses(plain) == losses(fsdp)


def test_non_finite_loss_stops_without_poisoned_checkpoint(small_corpus: Path, tmp_path: Path) -> None:
    cfg = run_config(small_corpus, tmp_path, TRANSFORMER, max_steps=20, eval_every=2, optimizer="sgd",
                     lr=1e25, grad_clip=0.0, warmup_steps=0, schedule="constant")
    with pytest.raises(TrainingError, match=r"non-finite .* at step \d+"):
        train(cfg)
    if (tmp_path / "latest").exists():
        model, _, _ = load_checkpoint(tmp_path / (tmp_path / "latest").read_text().strip())
        assert all(torch.isfinite(p).all() for p in model.parameters())
    skip = run_config(small_corpus, tmp_path / "skip", TRANSFORMER, max_steps=4, eval_every=4, optimizer="sgd",
                      lr=1e25, grad_clip=0.0, warmup_steps=0, schedule="constant", on_nan="skip")
    assert train(skip).skipped_steps >= 1


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) train.lrate; valid keys in \[train\]: .*lr"):
        run_config_from_dict({"train": {"lrate": 1}})
    with pytest.raises(ConfigError, match="train.batch_size must be an integer"):
        run_config_from_dict({"train": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match="model.cell must be one of"):
        run_config_from_dict({"model": {"family": "rnn", "cell": "tree"}})
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlr = 0.1\n")
    assert load_run_config(str(path), ["train.lr=0.5", "model.n_layer=3"]).train.lr == 0.5
    with pytest.raises(ConfigError, match="table.key=value"):
        load_run_config(str(path), ["lr=1"])


def test_cli_train_generate_ready_checkpoint(small_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'[data]\ntrain = ["{small_corpus}"]\nvalid_fraction = 0.1\n[tokenizer]\nkind = "char"\n'
        '[model]\nfamily = "rnn"\ncell = "lstm"\nn_embd = 16\nn_hidden = 16\n'
        f'[train]\nout_dir = "{tmp_path / "run"}"\nbatch_size = 4\nseq_len = 8\nmax_steps = 4\neval_every = 2\n'
        "progress = false\n"
    )
    assert main(["train", "--config", str(cfg)]) == 0
    assert "done: 4 steps" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "shipped"), "--dtype", "bf16"]) == 0
    model, _, config = load_checkpoint(tmp_path / "shipped")
    assert config.cell == "lstm" and not (tmp_path / "shipped" / "trainer_state.pt").exists()
    assert main(["train", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_load_refuses_inconsistent_checkpoint(small_corpus: Path, tmp_path: Path) -> None:
    result = train(run_config(small_corpus, tmp_path / "run", TRANSFORMER, max_steps=2, eval_every=2))
    best = result.run_dir / "best"
    meta = json.loads((best / "config.json").read_text())
    meta["model"]["n_embd"] = 32
    (best / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(best)
    (best / "model.safetensors").write_bytes(b"\x80\x04garbage")
    meta["model"]["n_embd"] = 16
    (best / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(best)


def test_early_stopping_and_plateau(small_corpus: Path, tmp_path: Path) -> None:
    """With a learning rate too small to help, validation stalls: plateau cuts lr, patience stops."""
    cfg = run_config(small_corpus, tmp_path, TRANSFORMER, max_steps=200, eval_every=2, lr=1e-30, min_lr=1e-31,
                     warmup_steps=0, schedule="plateau", plateau_factor=10.0, patience=2, optimizer="sgd",
                     weight_decay=0.0, eval_batches=2)
    t = Trainer(cfg)
    result = t.fit()
    assert result.steps == 6  # best at the first evaluation, then two without improvement
    assert t.progress.evals_since_best == 2
    assert t.progress.plateau_scale <= 0.01 + 1e-12


@pytest.mark.parametrize(("table", "message"), [
    ({"train": {"lr": "0.1"}}, "train.lr must be a number, got '0.1'"),
    ({"train": {"max_steps": "2"}}, "train.max_steps must be an integer, got '2'"),
    ({"train": {"compile": 1}}, "train.compile must be true or false, got 1"),
    ({"tokenizer": {"kind": 3}}, "tokenizer.kind must be a string, got 3"),
    ({"data": {"train": [1]}}, "data.train must be a string, got 1"),
    ({"model": {"family": "rnn", "n_layer": "2"}}, "model.n_layer must be an integer, got '2'"),
])
def test_config_types_are_strict(table: dict, message: str) -> None:
    """A TOML value of the wrong type is an error naming the key and the type, never coerced."""
    with pytest.raises(ConfigError) as info:
        run_config_from_dict(table)
    assert str(info.value) == message


def test_config_keeps_numbers_lists_and_dataclass_checks() -> None:
    cfg = run_config_from_dict({"train": {"lr": 1, "max_time": 5}, "data": {"train": "a.txt"}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.train == ("a.txt",)
    with pytest.raises(ConfigError, match=r"^train.lr must be > 0, got -1.0$"):
        run_config_from_dict({"train": {"lr": -1.0}})


def test_loss_plot_skipped_without_matplotlib(tmp_path, monkeypatch, caplog) -> None:
    """matplotlib is an extra: without it the run still ends, and the log says why no plot."""
    import sys

    from lm.training.trainer import write_loss_plot

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with caplog.at_level("INFO"):
        assert write_loss_plot(tmp_path) is None
    assert "matplotlib is not installed" in caplog.text
    assert not (tmp_path / "loss.png").exists()


def test_train_progress_round_trips_and_reads_old_checkpoints() -> None:
    """The counters save and restore themselves; a checkpoint from before ``decay_start``
    was saved gets it derived from the warm-up, as it was on resume before."""
    from lm.training.trainstate import TrainProgress

    p = TrainProgress(step=7, tokens_seen=70, elapsed=1.5, best_val=2.0, last_val=2.5, evals_since_best=1,
                      plateau_scale=0.25, decay_start=None, skipped=1)
    assert TrainProgress.from_state(p.to_state(), warmup_steps=10, max_steps=100) == p
    p.decay_start = 0.1
    assert TrainProgress.from_state(p.to_state(), warmup_steps=10, max_steps=100) == p
    old = {k: v for k, v in p.to_state().items() if k != "decay_start"}
    assert TrainProgress.from_state(old, warmup_steps=5, max_steps=100).decay_start == 0.05
    assert TrainProgress.from_state(old, warmup_steps=50, max_steps=100).decay_start is None


def test_resume_refuses_what_it_would_silently_ignore_or_change(
    small_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--resume`` continues a run as it was started: ``--config`` and ``--set`` on its data,
    tokenizer or model are errors, not ignored or applied behind the user's back; a finished
    run says there is nothing to do and how to extend it; train.* settings may change."""
    cfg = tmp_path / "run.toml"
    run_dir = tmp_path / "run"
    cfg.write_text(
        f'[data]\ntrain = ["{small_corpus}"]\nvalid_fraction = 0.1\n[tokenizer]\nkind = "char"\n'
        '[model]\nfamily = "rnn"\ncell = "lstm"\nn_embd = 16\nn_hidden = 16\n'
        f'[train]\nout_dir = "{run_dir}"\nbatch_size = 4\nseq_len = 8\nmax_steps = 4\neval_every = 2\n'
        "progress = false\n"
    )
    assert main(["train", "--config", str(cfg)]) == 0
    capsys.readouterr()
    recorded = (run_dir / "run_config.json").read_text()

    assert main(["train", "--resume", str(run_dir), "--config", str(cfg)]) == 2
    assert "--config cannot change it" in capsys.readouterr().err
    other = tmp_path / "other.txt"
    other.write_text("something else entirely\n" * 50)
    for override in (f"data.train={other}", "model.n_hidden=32", "tokenizer.kind=word", "train.out_dir=x"):
        assert main(["train", "--resume", str(run_dir), "--set", override]) == 2
        err = capsys.readouterr().err
        assert f"--resume cannot change {override.split('=')[0]}" in err and err.count("\n") == 1
    assert (run_dir / "run_config.json").read_text() == recorded  # nothing rewritten

    assert main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "step 4 of train.max_steps = 4" in err
    assert f"--resume {run_dir} --set train.max_steps=8" in err
    assert main(["train", "--resume", str(run_dir), "--set", "train.max_steps=6"]) == 0
    assert "done: 6 steps" in capsys.readouterr().out
