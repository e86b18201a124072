"""``lmforge generate`` and ``lmforge score`` against tiny checkpoints saved in the test."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lm.checkpoint import save_checkpoint
from lm.cli import main
from lm.config import RNNConfig, TransformerConfig
from lm.decoding.generate import generate
from lm.decoding.params import GenerationParams
from lm.models import build_model
from tokenizer import CharTokenizer, train_tokenizer

CORPUS = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n" * 5




@pytest.fixture(scope="module")
def char_ckpt(tmp_path_factory):
    tok = CharTokenizer(sorted(set(CORPUS)))
    torch.manual_seed(0)
    model = build_model(TransformerConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "char", model.eval(), tok), model, tok


@pytest.fixture(scope="module")
def word_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("word")
    (root / "train.txt").write_text(CORPUS, encoding="utf-8")
    tok = train_tokenizer("word", [root / "train.txt"])
    torch.manual_seed(0)
    model = build_model(RNNConfig(vocab_size=tok.vocab_size, n_embd=16, n_hidden=16, n_layer=1))
    return save_checkpoint(root / "ckpt", model.eval(), tok), model, tok


def test_generate_prints_prompt_and_continuation(char_ckpt, capsys):
    path, model, tok = char_ckpt
    assert main(["generate", str(path), "--prompt", "the c", "--max-new-tokens", "12", "--ignore-eos"]) == 0
    out = capsys.readouterr().out
    [[expected]] = generate(model, tok, ["the c"], GenerationParams(max_new_tokens=12, stop_at_eos=False))
    assert out == "the c" + expected.text + "\n"


def test_generate_json_and_all_options(char_ckpt, capsys):
    path, model, tok = char_ckpt
    args = ["generate", str(path), "--prompt", "the", "--prompt", "a", "--strategy", "sample", "--seed", "3",
            "--temperature", "0.7", "--top-k", "5", "--top-p", "0.9", "--min-p", "0.01", "--repetition-penalty",
            "1.1", "--no-repeat-ngram-size", "3", "-n", "2", "--max-new-tokens", "8", "--stop", "zz", "--json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [len(r["completions"]) for r in doc["results"]] == [2, 2]
    params = GenerationParams(strategy="sample", seed=3, temperature=0.7, top_k=5, top_p=0.9, min_p=0.01,
                              repetition_penalty=1.1, no_repeat_ngram_size=3, num_return_sequences=2,
                              max_new_tokens=8, stop=("zz",))
    expected = generate(model, tok, ["the", "a"], params)
    assert [[c["token_ids"] for c in r["completions"]] for r in doc["results"]] == \
        [[c.token_ids for c in cs] for cs in expected]
    c = doc["results"][0]["completions"][0]
    assert set(c) == {"text", "token_ids", "logprobs", "cumulative_logprob", "finish_reason", "prompt_tokens",
                      "top_logprobs"}
    assert c["top_logprobs"] == []  # not asked for
    assert main([*args, "--top-logprobs", "3"]) == 0
    c = json.loads(capsys.readouterr().out)["results"][0]["completions"][0]
    assert len(c["top_logprobs"]) == len(c["token_ids"]) and all(len(t) == 3 for t in c["top_logprobs"])
    assert main([*args, "--top-logprobs", "21"]) == 2
    assert "top_logprobs must be <= 20" in capsys.readouterr().err


def test_generate_beam_and_stream(char_ckpt, capsys):
    path, model, tok = char_ckpt
    assert main(["generate", str(path), "--prompt", "the", "--strategy", "beam", "--num-beams", "3", "-n", "2",
                 "--length-penalty", "0.5", "--no-early-stopping", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- prompt 1, completion") == 2
    assert main(["generate", str(path), "--prompt", "the", "--stream", "--max-new-tokens", "10"]) == 0
    streamed = capsys.readouterr().out
    [[c]] = generate(model, tok, ["the"], GenerationParams(max_new_tokens=10))
    assert streamed == "the" + c.text + "\n"
    assert main(["generate", str(path), "--prompt", "the", "--stream", "--json", "--max-new-tokens", "3",
                 "--ignore-eos"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4 and lines[-1]["completion"]["finish_reason"] == "length"


def test_generate_bad_parameter_is_a_one_line_error(char_ckpt, capsys):
    path, _, _ = char_ckpt
    assert main(["generate", str(path), "--prompt", "x", "--top-p", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "lmforge generate: error: top_p must be in (0, 1], got 1.5"
    assert main(["generate", str(path), "--prompt", "x", "--strategy", "beam", "--stream"]) == 2
    assert "--stream" in capsys.readouterr().err


def test_score_whole_file_and_per_line(word_ckpt, tmp_path, capsys):
    path, model, tok = word_ckpt
    text = "the cat sat on the log\na dog and a cat\n"
    f = tmp_path / "test.txt"
    f.write_text(text, encoding="utf-8")
    assert main(["score", str(path), "--input", str(f), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    total = doc["total"]
    assert total["tokens"] == len(tok.encode(text)) == 13  # 11 words + 2 <eos>
    assert total["perplexity"] == pytest.approx(math.exp(total["nll"] / 13))
    assert total["bits_per_char"] == pytest.approx(total["nll"] / math.log(2) / len(text))

    assert main(["score", str(path), "--input", str(f), "--per-line", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [t["tokens"] for t in doc["texts"]] == [7, 6]
    assert doc["total"]["tokens"] == 13

    assert main(["score", str(path), "--input", str(f)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["input", "tokens", "chars", "nll/token", "perplexity", "bits/char"]
    assert table[1].split()[1] == "13"
    assert float(table[1].split()[4]) == pytest.approx(total["perplexity"], rel=1e-3)


def test_score_stride_and_errors(char_ckpt, tmp_path, capsys):
    path, _, _ = char_ckpt
    f = tmp_path / "long.txt"
    f.write_text(CORPUS, encoding="utf-8")
    assert main(["score", str(path), "--input", str(f), "--stride", "8", "--json", "--token-logprobs"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["texts"][0]["token_logprobs"]) == doc["total"]["tokens"] == len(CORPUS)
    assert main(["score", str(path), "--input", str(f), "--stride", "99"]) == 2
    assert "stride must be an integer in [1, 32], got 99" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "missing"), "--input", str(f)]) == 2


def test_without_a_strategy_generate_uses_the_checkpoints_example(char_ckpt, tmp_path, capsys):
    """Greedy decoding of a small model loops; an unconfigured ``generate`` decodes with the
    checkpoint's example settings instead, and options given override single settings."""
    from lm.example import Example

    _, model, tok = char_ckpt
    example = Example("the", {"strategy": "sample", "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 400})
    path = save_checkpoint(tmp_path / "with-example", model.eval(), tok, example=example)
    assert main(["generate", str(path), "--prompt", "the", "--seed", "4", "--max-new-tokens", "12", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["params"]["strategy"], doc["params"]["temperature"], doc["params"]["top_p"]) == ("sample", 0.8, 0.95)
    assert doc["params"]["max_new_tokens"] == 12 and doc["params"]["seed"] == 4
    expected = generate(model, tok, ["the"], GenerationParams(strategy="sample", temperature=0.8, top_p=0.95,
                                                              seed=4, max_new_tokens=12))
    assert doc["results"][0]["completions"][0]["text"] == expected[0][0].text
    assert main(["generate", str(path), "--prompt", "the", "--strategy", "greedy", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["strategy"] == "greedy"
    assert main(["generate", str(path), "--prompt", "the", "--temperature", "-1"]) == 2  # checked before loading
