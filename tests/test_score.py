"""Scoring: a uniform model's perplexity is its vocabulary size; windows and chunks give the
same numbers as brute force; every token is counted once."""

from __future__ import annotations

import math

import pytest
import torch

import lm.score
from lm.config import RNNConfig, TransformerConfig
from lm.context import TextContext
from lm.decoding.params import ParamError
from lm.losses import token_nll
from lm.models import build_model
from lm.score import score_ids, score_texts, windows
from tokenizer import CharTokenizer

TOK = CharTokenizer(list("abcdefghij .,\n"))
START = TOK.encode("\n")[0]
"""What a text starts after: the line break (``lm.context``)."""
TEXT = "abc def ghi.\nj, a b c\n" * 3




def tiny(family: str, block_size: int = 16):
    torch.manual_seed(2)
    if family == "transformer":
        cfg = TransformerConfig(vocab_size=TOK.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32)
    else:
        cfg = RNNConfig(vocab_size=TOK.vocab_size, n_embd=32, n_hidden=32, n_layer=2)
    return build_model(cfg).eval()


def brute_force(model, text: str, context: int | None) -> list[float]:
    """NLL of token j given the ``context`` tokens before it (all of them if None), one forward
    per token."""
    x = [START] + TOK.encode(text)
    out = []
    with torch.no_grad():
        for j in range(1, len(x)):
            lo = 0 if context is None else max(0, j - context)
            logits, _ = model(torch.tensor([x[lo:j]]), use_cache=False)
            out.append(float(token_nll(logits[:, -1:], torch.tensor([[x[j]]]))))
    return out


@pytest.mark.parametrize("family", ["transformer", "rnn"])
def test_uniform_model_perplexity_is_vocab_size(family):
    model = tiny(family)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # all logits 0
    [r] = score_texts(model, TOK, [TEXT])
    n = len(TOK.encode(TEXT))
    assert r.tokens == n and r.characters == len(TEXT)
    assert r.perplexity == pytest.approx(TOK.vocab_size, rel=1e-5)
    assert r.nll == pytest.approx(n * math.log(TOK.vocab_size), rel=1e-6)
    assert r.bits_per_char == pytest.approx(n * math.log2(TOK.vocab_size) / len(TEXT), rel=1e-6)


def test_window_equals_full_computation_when_text_fits():
    model = tiny("transformer", block_size=64)
    text = "abc def ghi j"
    full = brute_force(model, text, None)
    for stride in (None, 1, 7, 64):
        [r] = score_texts(model, TOK, [text], stride=stride, token_logprobs=True)
        assert [-lp for lp in r.token_logprobs] == pytest.approx(full, abs=1e-4)
        assert r.nll == pytest.approx(sum(full), abs=1e-3)


@pytest.mark.parametrize("stride", [16, 5, 1])
def test_sliding_window_scores_each_token_once_with_its_context(stride):
    size = 16
    model = tiny("transformer", block_size=size)
    [r] = score_texts(model, TOK, [TEXT], stride=stride, token_logprobs=True)
    n = len(TOK.encode(TEXT))
    assert r.tokens == n == len(r.token_logprobs)
    # Token j is scored in the window ending at the first window end past j; brute force with
    # the same left context.
    expected = []
    x = [START] + TOK.encode(TEXT)
    with torch.no_grad():
        for begin, end, first in windows(n, size, stride):
            logits, _ = model(torch.tensor([x[begin:end]]), use_cache=False)
            nll = token_nll(logits, torch.tensor([x[begin + 1 : end + 1]]))[0]
            expected += nll[first - begin :].tolist()
    assert [-lp for lp in r.token_logprobs] == pytest.approx(expected, abs=1e-4)
    if stride == 1:  # every token gets the full context: the brute-force sliding computation
        assert [-lp for lp in r.token_logprobs] == pytest.approx(brute_force(model, TEXT, size), abs=1e-4)


def test_windows_cover_each_position_once():
    for n in (0, 1, 15, 16, 17, 100):
        for size, stride in ((16, 16), (16, 5), (16, 1), (1, 1)):
            scored = [j for _, end, first in windows(n, size, stride) for j in range(first, end)]
            assert scored == list(range(n))
            assert all(end - begin <= size and begin <= first for begin, end, first in windows(n, size, stride))


def test_recurrent_chunks_are_exact(monkeypatch):
    model = tiny("rnn")
    full = brute_force(model, TEXT, None)
    monkeypatch.setattr(lm.score, "RNN_CHUNK", 7)
    [r] = score_texts(model, TOK, [TEXT], token_logprobs=True)
    assert [-lp for lp in r.token_logprobs] == pytest.approx(full, abs=1e-4)


@pytest.mark.parametrize("family", ["transformer", "rnn"])
def test_batched_texts_equal_one_by_one(family):
    model = tiny(family)
    texts = [TEXT, "a", "", "j, j, j\n", TEXT[:40]]
    together = score_texts(model, TOK, texts, batch_size=3)
    for text, r in zip(texts, together, strict=True):
        [alone] = score_texts(model, TOK, [text], batch_size=1)
        assert r.tokens == alone.tokens == len(TOK.encode(text))
        assert r.nll == pytest.approx(alone.nll, abs=1e-4)
    assert together[2].tokens == 0 and together[2].nll == 0.0


def test_first_token_without_a_text_start_is_not_scored():
    model = tiny("rnn")
    ids = TOK.encode("abc")
    [nll] = score_ids(model, [ids], context=TextContext((), None))
    assert len(nll) == len(ids) - 1


def test_invalid_arguments():
    model = tiny("transformer")
    with pytest.raises(ParamError, match=r"stride must be an integer in \[1, 16\], got 17"):
        score_texts(model, TOK, [TEXT], stride=17)
    with pytest.raises(ParamError, match="stride"):
        score_texts(model, TOK, [TEXT], stride=0)
    with pytest.raises(ParamError, match="batch_size must be"):
        score_texts(model, TOK, [TEXT], batch_size=0)


@pytest.mark.parametrize("family", ["transformer", "rnn"])
def test_sliced_output_layer_equals_full_logits(family: str) -> None:
    """Scoring applies the output layer in slices of positions; the NLL is the full logits' one."""
    from lm import losses

    torch.manual_seed(0)
    cfg = (TransformerConfig(vocab_size=50, block_size=40, n_layer=1, n_head=2, n_embd=16) if family == "transformer"
           else RNNConfig(vocab_size=50, cell="lstm", n_embd=16, n_hidden=24, n_layer=1))
    model = build_model(cfg).eval()
    x, y = torch.randint(0, 50, (3, 40)), torch.randint(0, 50, (3, 40))
    y[1, :5] = -100
    with torch.inference_mode():
        logits, _ = model(x, use_cache=False)
        hidden, _ = model(x, use_cache=False, return_hidden=True)
        old = losses.SCORE_ROWS
        try:
            losses.SCORE_ROWS = 7  # several slices, the last one short
            sliced = losses.hidden_token_nll(hidden, model.output_layer, y)
        finally:
            losses.SCORE_ROWS = old
    torch.testing.assert_close(sliced, losses.token_nll(logits, y), atol=1e-5, rtol=1e-5)
    assert bool((sliced[1, :5] == 0).all())
