"""Logits transforms one by one, the draw, and parameter validation."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.decoding.params import GenerationParams, ParamError
from lm.decoding.sampling import (
    RowSampler,
    banned_ngram_tokens,
    draw,
    min_p,
    repetition_penalty,
    top_k,
    top_p,
)
from lm.decoding.streaming import TextStream
from tokenizer import CharTokenizer

NEG = float("-inf")




def test_top_k_per_row():
    sorted_logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]] * 3)  # transforms see candidates best first
    out = top_k(sorted_logits, torch.tensor([[2], [0], [9]]))  # 0 and > V keep everything
    assert out[0].tolist() == [4.0, 3.0, NEG, NEG]
    assert out[1].tolist() == out[2].tolist() == sorted_logits[0].tolist()


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3)
    out = top_p(probs.log(), torch.tensor([[0.7], [0.8], [1.0]]))
    assert torch.isfinite(out).tolist() == [
        [True, True, False, False],  # 0.5 < 0.7 <= 0.8
        [True, True, False, False],  # reaching 0.8 exactly needs no third token
        [True, True, True, True],
    ]
    tiny = top_p(probs.log(), torch.tensor([[1e-6]] * 3))
    assert torch.isfinite(tiny).sum(1).tolist() == [1, 1, 1]  # the best token always stays


def test_sampler_keeps_only_allowed_tokens_and_mixes_rows():
    """A batch mixing greedy rows, top-k rows and top-p rows: every drawn token is allowed by
    its own row's settings, and greedy rows get the argmax."""
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    params = [GenerationParams(strategy="sample", top_k=3), GenerationParams(),
              GenerationParams(strategy="sample", top_p=0.5), GenerationParams(strategy="sample", top_k=2, min_p=0.5)]
    sampler = RowSampler(params, torch.device("cpu"))
    order = logits.argsort(-1, descending=True)
    probs = logits.softmax(-1)
    nucleus = int((probs.sort(descending=True).values.cumsum(-1) < 0.5).sum()) + 1
    for seed in range(30):
        rng = random.Random(seed)
        tokens = sampler.choose(logits, torch.tensor([rng.random() for _ in params], dtype=torch.float64))
        assert int(tokens[0]) in order[0, :3].tolist()
        assert int(tokens[1]) == int(logits[1].argmax())
        assert int(tokens[2]) in order[2, :nucleus].tolist()
        assert int(tokens[3]) in order[3, :2].tolist()


def test_min_p_is_relative_to_the_best_token():
    probs = torch.tensor([[0.6, 0.3, 0.06, 0.04]])
    out = min_p(probs.log(), torch.tensor([[0.1]]))  # threshold 0.06
    assert torch.isfinite(out).tolist() == [[True, True, True, False]]
    assert torch.equal(min_p(probs.log(), torch.tensor([[0.0]])), probs.log())


def test_repetition_penalty_always_lowers_seen_tokens():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    assert repetition_penalty(logits, seen, torch.tensor([[2.0]])).tolist() == [[1.0, -4.0, 1.0]]


def test_banned_ngram_tokens():
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 3) == [3]
    assert sorted(banned_ngram_tokens([1, 2, 1, 3, 1], 2)) == [2, 3]
    assert sorted(banned_ngram_tokens([5, 6, 5], 1)) == [5, 6]
    assert banned_ngram_tokens([1, 2], 3) == [] and banned_ngram_tokens([1, 1], 0) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=8), st.integers(0, 7), st.floats(0, 1, exclude_max=True))
def test_draw_never_picks_a_banned_token(values, banned, u):
    logits = torch.tensor([values])
    banned %= len(values)
    logits[0, banned] = NEG
    token = int(draw(logits, torch.tensor([u], dtype=torch.float64))[0])
    assert 0 <= token < len(values) and token != banned


def test_draw_follows_the_distribution():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    rng = random.Random(0)
    u = torch.tensor([rng.random() for _ in range(20000)], dtype=torch.float64)
    counts = torch.bincount(draw(probs.log().expand(len(u), -1), u), minlength=4).float() / len(u)
    assert counts[1] == 0
    assert counts.tolist() == pytest.approx(probs.tolist(), abs=0.015)


@pytest.mark.parametrize(("kw", "field", "message"), [
    (dict(top_p=1.5), "top_p", "top_p must be in (0, 1], got 1.5"),
    (dict(top_p=0.0), "top_p", "top_p must be in (0, 1], got 0.0"),
    (dict(num_beams=0), "num_beams", "num_beams must be >= 1, got 0"),
    (dict(temperature=-0.5), "temperature", "temperature must be >= 0 (0 means greedy), got -0.5"),
    (dict(strategy="beam", num_beams=2, num_return_sequences=3), "num_return_sequences",
     "num_return_sequences must be <= num_beams (2) for beam search, got 3"),
    (dict(strategy="nucleus"), "strategy", "strategy must be one of greedy, sample, beam; got 'nucleus'"),
    (dict(max_new_tokens=-1), "max_new_tokens", "max_new_tokens must be >= 0, got -1"),
    (dict(max_new_tokens=2.5), "max_new_tokens", "max_new_tokens must be an integer >= 0, got 2.5"),
    (dict(top_k=-1), "top_k", "top_k must be >= 0, got -1"),
    (dict(min_p=1.0), "min_p", "min_p must be in [0, 1), got 1.0"),
    (dict(repetition_penalty=0), "repetition_penalty", "repetition_penalty must be > 0, got 0"),
    (dict(temperature=float("nan")), "temperature", "temperature must be a finite number, got nan"),
    (dict(seed="1"), "seed", "seed must be an integer or None, got '1'"),
    (dict(stop=("ok", "")), "stop", "stop must be a list of non-empty strings"),
    (dict(no_repeat_ngram_size=True), "no_repeat_ngram_size", "no_repeat_ngram_size must be an integer"),
])
def test_invalid_params_name_the_field(kw, field, message):
    with pytest.raises(ParamError) as info:
        GenerationParams(**kw)
    assert info.value.field == field
    assert message in str(info.value)


def test_params_accept_convenient_forms():
    assert GenerationParams(stop="\n").stop == ("\n",)
    assert GenerationParams(stop=["a", "b"]).stop == ("a", "b")
    assert GenerationParams(top_k=10**9).top_k == 10**9  # larger than any vocabulary: clamped when used
    assert GenerationParams(strategy="beam", num_beams=4).rows == 4
    assert GenerationParams(strategy="sample", num_return_sequences=3).rows == 3


def test_text_stream_holds_back_possible_stop_prefixes():
    tok = CharTokenizer(list("abc"))
    stream = TextStream(tok, [], stop=("bc",))
    deltas = [stream.push(t) for t in tok.encode("aab")]
    assert deltas == ["a", "a", ""]  # "b" might begin "bc"
    assert stream.push(tok.encode("a")[0]) == "ba"
    assert stream.push(tok.encode("b")[0]) == ""
    assert stream.push(tok.encode("c")[0]) == "" and stream.stopped
    assert stream.text == "aaba" and stream.finish() == ""
