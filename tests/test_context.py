"""Train and serve agree on where a text starts and how much context the model gets
(``lm.context``), and the smaller defects found beside it stay fixed: a run cannot silently
reuse another tokenizer, decay starts at the peak rate, a Pipeline leaves the caller's model
alone, ``lm.load_checkpoint`` exists."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lm
from lm.checkpoint import CheckpointError, read_context, save_checkpoint
from lm.config import RNNConfig, TransformerConfig, run_config_from_dict
from lm.context import TextContext, line_break_ids
from lm.decoding.engine import DecodeSession
from lm.decoding.generate import generate
from lm.decoding.params import GenerationParams, ParamError
from lm.models import build_model
from lm.pipeline import Pipeline
from lm.score import score_texts
from lm.training.optim import scheduled_lr
from lm.training.trainer import Trainer, TrainingError, train
from tokenizer import CharTokenizer, WordTokenizer, train_tokenizer

CHAR = CharTokenizer(list("abc \n"))


def run_config(corpus: Path, out: Path, *, seq_len: int = 8, block_size: int = 32, tokenizer=None, **train_kw):  # noqa: ANN001, ANN003
    return run_config_from_dict({
        "data": {"train": [str(corpus)], "valid_fraction": 0.1},
        "tokenizer": tokenizer or {"kind": "char"},
        "model": {"family": "transformer", "block_size": block_size, "n_layer": 1, "n_head": 2, "n_embd": 16},
        "train": {"out_dir": str(out), "batch_size": 4, "seq_len": seq_len, "max_steps": 4, "eval_every": 4,
                  "warmup_steps": 1, "progress": False, "precision": "fp32", **train_kw},
    })


def test_line_break_is_each_kinds_text_start(small_corpus: Path) -> None:
    for kind, size in (("char", None), ("word", None), ("bpe", 300)):
        tok = train_tokenizer(kind, [small_corpus], size)
        start = line_break_ids(tok)
        assert len(start) == 1 and tok.decode(list(start)) == "\n"
        assert tok.encode("x\nFirst") == tok.encode("x") + list(start) + tok.encode("First")
    assert line_break_ids(WordTokenizer(["a"], eos_at_newline=False)) == ()
    assert line_break_ids(CharTokenizer(list("ab"), unk_policy="unk")) == ()  # only <unk> could spell it


def test_trained_checkpoint_records_start_and_trained_context(small_corpus: Path, tmp_path: Path) -> None:
    """seq_len 8 < block_size 32: the checkpoint's usable context is the 8 it was trained on,
    and every file of the corpus starts after the line break in the token stream."""
    trainer = Trainer(run_config(small_corpus, tmp_path))
    nl = trainer.tokenizer.encode("\n")
    assert trainer.context == TextContext(tuple(nl), 8)
    assert int(trainer.train_tokens[0]) == nl[0]  # the first line, too, follows a line break
    trainer.fit()
    meta = json.loads((tmp_path / "best" / "config.json").read_text())
    assert meta["context"] == {"start_ids": nl, "start_text": "\n", "max_length": 8}
    pipe = Pipeline.from_checkpoint(tmp_path)
    assert pipe.context == TextContext(tuple(nl), 8)

    lengths: list[int] = []
    hook = pipe.model.register_forward_pre_hook(lambda _m, args: lengths.append(args[0].shape[1]))
    try:
        pipe.generate(["First Citizen: before we proceed"], GenerationParams(max_new_tokens=20, stop_at_eos=False))
        pipe.score(["First Citizen: before we proceed any further, hear me speak."])
    finally:
        hook.remove()
    assert lengths and max(lengths) <= 8


def test_checkpoint_without_a_context_record_gets_the_trainers_rule(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    model = build_model(TransformerConfig(vocab_size=CHAR.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=8))
    directory = save_checkpoint(tmp_path / "old", model, CHAR, training={"run": {"train": {"seq_len": 12}}})
    meta = json.loads((directory / "config.json").read_text())
    del meta["context"]
    (directory / "config.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        context = read_context(directory)
    assert context == TextContext(tuple(CHAR.encode("\n")), 12)
    assert "predates the context record" in caplog.text


@pytest.mark.parametrize("bad", [{"start_ids": [999], "max_length": 8}, {"start_ids": [4], "max_length": 64},
                                 {"start_ids": "x", "max_length": 8}, {"start_ids": [], "max_length": 8, "x": 1}])
def test_a_malformed_context_record_is_refused(tmp_path: Path, bad: dict) -> None:
    model = build_model(TransformerConfig(vocab_size=CHAR.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=8))
    directory = save_checkpoint(tmp_path / "ckpt", model, CHAR)
    meta = json.loads((directory / "config.json").read_text())
    meta["context"] = bad
    (directory / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="context"):
        read_context(directory)


@pytest.mark.parametrize("family", ["transformer", "rnn"])
def test_a_text_that_starts_with_the_line_break_is_framed_once(family: str) -> None:
    torch.manual_seed(0)
    cfg = (TransformerConfig(vocab_size=CHAR.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
           if family == "transformer" else RNNConfig(vocab_size=CHAR.vocab_size, n_embd=16, n_hidden=16, n_layer=1))
    model = build_model(cfg).eval()
    params = GenerationParams(max_new_tokens=10, stop_at_eos=False)
    [[plain]] = generate(model, CHAR, ["ab"], params)
    [[framed]] = generate(model, CHAR, ["\nab"], params)
    assert framed.token_ids == plain.token_ids
    plain_score, framed_score = score_texts(model, CHAR, ["ab c", "\nab c"], token_logprobs=True)
    assert framed_score.tokens == plain_score.tokens == 4  # the leading line break is context, not scored
    assert framed_score.token_logprobs == pytest.approx(plain_score.token_logprobs, abs=1e-6)


def test_without_a_text_start_the_first_token_is_context() -> None:
    tok = WordTokenizer(["a", "b"], eos_at_newline=False)
    model = build_model(RNNConfig(vocab_size=tok.vocab_size, n_embd=8, n_hidden=8, n_layer=1)).eval()
    [r] = score_texts(model, tok, ["a b a"])
    assert r.tokens == 2
    session = DecodeSession(model, tok)
    with pytest.raises(ParamError, match="no start-of-text context"):
        session.add("empty", [], GenerationParams())


def test_a_fresh_run_never_reuses_a_tokenizer_made_for_another_table(small_corpus: Path, tmp_path: Path) -> None:
    train(run_config(small_corpus, tmp_path, max_steps=2))
    Trainer(run_config(small_corpus, tmp_path, max_steps=2))  # the same table: the tokenizer is reused
    changed = run_config(small_corpus, tmp_path, max_steps=2, tokenizer={"kind": "char", "unk_policy": "unk"})
    with pytest.raises(TrainingError, match=r"tokenizer\.unk_policy.*--resume"):
        Trainer(changed)
    Trainer(run_config(small_corpus, tmp_path, max_steps=4), resume=True)  # resuming is what --resume is for


def test_cosine_decay_starts_at_the_peak_after_warm_up(small_corpus: Path, tmp_path: Path) -> None:
    cfg = run_config(small_corpus, tmp_path, max_steps=100, warmup_steps=20, lr=1e-2, min_lr=1e-4).train
    assert scheduled_lr(cfg, 19, 0.19) == pytest.approx(1e-2)  # the last warm-up step reaches the peak
    assert scheduled_lr(cfg, 20, 0.20, decay_start=0.20) == pytest.approx(1e-2)  # and decay starts there
    assert scheduled_lr(cfg, 60, 0.60, decay_start=0.20) == pytest.approx(1e-4 + 0.5 * (1e-2 - 1e-4))
    assert scheduled_lr(cfg, 100, 1.0, decay_start=0.20) == pytest.approx(1e-4)
    result = train(run_config(small_corpus, tmp_path, max_steps=12, warmup_steps=4, lr=1e-2, min_lr=1e-4,
                              log_every=1, eval_every=12))
    lrs = [r["lr"] for r in result.history if "lr" in r]
    assert lrs[3] == pytest.approx(1e-2) and lrs[4] == pytest.approx(1e-2)  # warm-up peak, then decay from it
    assert lrs[4] > lrs[5] > lrs[-1]


def test_a_pipeline_leaves_the_callers_model_alone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(TransformerConfig(vocab_size=CHAR.vocab_size, block_size=16, n_layer=1, n_head=2,
                                          n_embd=256))  # large enough to be packed for inference
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    strides = {k: v.stride() for k, v in model.state_dict().items()}
    pipe = Pipeline(model, CHAR, model.config)
    pipe.generate(["ab"], GenerationParams(max_new_tokens=3))
    assert model.training
    assert not any(isinstance(m, nn.Linear) and type(m) is not nn.Linear for m in model.modules())
    for k, v in model.state_dict().items():
        assert v.stride() == strides[k] and torch.equal(v, before[k])
    save_checkpoint(tmp_path / "after", model, CHAR)  # still savable


def test_load_checkpoint_is_at_the_package_top(tmp_path: Path) -> None:
    model = build_model(RNNConfig(vocab_size=CHAR.vocab_size, n_embd=8, n_hidden=8, n_layer=1))
    save_checkpoint(tmp_path / "c", model, CHAR)
    loaded, tok, config = lm.load_checkpoint(tmp_path / "c")
    assert config == model.config and tok.vocab_size == CHAR.vocab_size
    mine = model.state_dict()
    assert all(np.allclose(v.numpy(), mine[k].numpy()) for k, v in loaded.state_dict().items())
