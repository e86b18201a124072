"""A checkpoint's example (``lm.example``): a prompt from held-out text and sampling settings,
written by the trainer, kept by export, checked on load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lm.checkpoint import CheckpointError, read_example, save_checkpoint
from lm.cli import main
from lm.config import TransformerConfig, run_config_from_dict
from lm.decoding.params import GenerationParams
from lm.example import Example, ExampleError, derive, prompt_from
from lm.models import build_model
from lm.pipeline import Pipeline
from lm.training.trainer import train
from tokenizer import CharTokenizer, train_tokenizer

SPEECH = "ROMEO:\nBut soft, what light through yonder window breaks?\n\n"


def test_prompt_is_the_first_whole_line_cut_to_a_few_words() -> None:
    assert prompt_from("ick.\n\nGREMIO:\nGood morrow, neighbour.\n") == "GREMIO:\n"  # first line was cut
    assert prompt_from("\nthe company said it expects to report a loss\n") == "the company said it expects to"
    assert prompt_from("\n<unk> <unk> watching abc\nconsumers may want to move their phones\nx") == (
        "consumers may want to move their"
    )
    assert prompt_from("") == "" and prompt_from("\n\n\n") == ""


def test_derive_samples_and_lets_a_word_model_run_past_line_ends(tmp_path: Path) -> None:
    char = derive(CharTokenizer(sorted(set(SPEECH))), "\n" + SPEECH)
    assert char.prompt == "ROMEO:\n" and char.params["strategy"] == "sample"
    assert "stop_at_eos" not in char.params
    GenerationParams(**char.params)  # valid settings
    (tmp_path / "c.txt").write_text(SPEECH * 3)
    word = derive(train_tokenizer("word", [tmp_path / "c.txt"]), "\n" + SPEECH)
    assert word.params["stop_at_eos"] is False and word.params["max_new_tokens"] < char.params["max_new_tokens"]
    assert word.params["suppress_tokens"] == [1] and "suppress_tokens" not in char.params  # <unk>
    GenerationParams(**word.params)


def test_example_round_trips_through_a_checkpoint_and_export(tmp_path: Path) -> None:
    tok = CharTokenizer(sorted(set(SPEECH)))
    model = build_model(TransformerConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    example = Example("ROMEO:\n", {"strategy": "sample", "temperature": 0.7, "stop": ["\n\n"]})
    path = save_checkpoint(tmp_path / "ckpt", model, tok, example=example)
    assert read_example(path) == example
    assert Pipeline.from_checkpoint(path).example == example
    assert main(["export", str(path), str(tmp_path / "out")]) == 0
    assert read_example(tmp_path / "out") == example
    assert read_example(save_checkpoint(tmp_path / "plain", model, tok)) is None


@pytest.mark.parametrize("bad", [{"prompt": 3}, {"prompt": "x", "extra": 1}, {"prompt": "x", "params": []}])
def test_a_malformed_example_names_the_file(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ExampleError):
        Example.from_dict(bad)
    tok = CharTokenizer(sorted(set(SPEECH)))
    model = build_model(TransformerConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    path = save_checkpoint(tmp_path / "ckpt", model, tok)
    meta = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**meta, "example": bad}))
    with pytest.raises(CheckpointError, match=r"config\.json: example must be"):
        read_example(path)


def test_invalid_example_settings_fail_the_load(tmp_path: Path) -> None:
    tok = CharTokenizer(sorted(set(SPEECH)))
    model = build_model(TransformerConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    for params, message in (({"temperature": -1}, "temperature must be >= 0"), ({"warmth": 1}, "warmth")):
        path = save_checkpoint(tmp_path / "ckpt", model, tok, example=Example("x", params))
        with pytest.raises(CheckpointError, match=message):
            Pipeline.from_checkpoint(path)


def test_the_trainer_writes_an_example_from_the_validation_text(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\n" * 30 + "JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n" * 4)
    run = run_config_from_dict({
        "data": {"train": [str(corpus)], "valid_fraction": 0.2},
        "tokenizer": {"kind": "char"},
        "model": {"family": "transformer", "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
        "train": {"out_dir": str(tmp_path / "run"), "batch_size": 4, "seq_len": 16, "max_steps": 2,
                  "eval_every": 2, "progress": False, "precision": "fp32"},
    })
    torch.manual_seed(0)
    train(run)
    example = read_example(tmp_path / "run" / "best")
    assert example is not None and example.prompt in ("JULIET:\n", "O Romeo, Romeo, wherefore art thou")
    assert read_example(tmp_path / "run" / "step-00000002") == example
