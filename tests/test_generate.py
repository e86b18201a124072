"""Decoding invariants on tiny random models of both families: cached == uncached, one beam ==
greedy, seeds, batching, stop strings and end of sequence."""

from __future__ import annotations

import math

import pytest
import torch

from lm.config import RNNConfig, TransformerConfig
from lm.decoding.generate import generate
from lm.decoding.params import Completion, GenerationParams
from lm.models import build_model
from tokenizer import CharTokenizer

CHARS = list("abcdefghij .,é€")
TOK = CharTokenizer(CHARS)
EOS = TOK.eos_id
START = TOK.encode("\n")
"""What a prompt is conditioned on: the line break (``lm.context``; byte fallback here)."""




def tiny(family: str, *, block_size: int = 64, pos_emb: str = "rope", seed: int = 0, scale: float = 1.0):
    """A small random model; ``scale`` multiplies the weights to make its distribution peaked
    (random models at init are nearly uniform, which makes every strategy look alike)."""
    torch.manual_seed(seed)
    if family == "transformer":
        cfg = TransformerConfig(vocab_size=TOK.vocab_size, block_size=block_size, n_layer=2, n_head=2,
                                n_embd=32, pos_emb=pos_emb)
    else:
        cfg = RNNConfig(vocab_size=TOK.vocab_size, cell="lstm", n_embd=32, n_hidden=32, n_layer=2)
    model = build_model(cfg).eval()
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.mul_(scale)
    return model


def uncached_greedy(model, context: list[int], steps: int) -> list[int]:
    """Reference: recompute the whole window from scratch for every token, sliding as the engine
    documents (a full window restarts from its last ``max_context // 2`` tokens)."""
    mc = model.max_context
    seq = list(context)
    start = max(0, len(seq) - mc) if mc else 0
    out = []
    with torch.no_grad():
        for _ in range(steps):
            if mc and len(seq) - start > mc:
                start = len(seq) - mc // 2
            logits, _ = model(torch.tensor([seq[start:]]), use_cache=False)
            token = int(logits[0, -1].argmax())
            seq.append(token)
            out.append(token)
    return out


def run(model, prompts, **kw) -> list[list[Completion]]:
    return generate(model, TOK, prompts, GenerationParams(**kw))


FAMILIES = ["transformer", "rnn"]


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_equals_uncached_greedy(family):
    model = tiny(family, block_size=16, scale=3.0)
    prompt = TOK.encode("abc de")
    # 40 new tokens with a 16-token context: the Transformer window slides several times.
    [[c]] = run(model, [prompt], max_new_tokens=40, stop_at_eos=False)
    assert c.token_ids == uncached_greedy(model, START + prompt, 40)
    assert c.finish_reason == "length" and c.prompt_tokens == len(prompt)


def test_cached_equals_uncached_learned_positions_and_long_prompt():
    """Learned positions cannot go past block_size, so sliding is what makes this work; the
    prompt alone is longer than the context."""
    model = tiny("transformer", block_size=12, pos_emb="learned", scale=3.0)
    prompt = TOK.encode("abcdefghij abcdefghij")
    [[c]] = run(model, [prompt], max_new_tokens=30, stop_at_eos=False)
    assert c.token_ids == uncached_greedy(model, START + prompt, 30)


@pytest.mark.parametrize("family", FAMILIES)
def test_logprobs_are_the_models(family):
    model = tiny(family, scale=3.0)
    prompt = TOK.encode("hello")
    [[c]] = run(model, [prompt], max_new_tokens=8, stop_at_eos=False)
    seq = START + prompt + c.token_ids
    with torch.no_grad():
        logits, _ = model(torch.tensor([seq[:-1]]), use_cache=False)
    ref = logits[0].log_softmax(-1)[torch.arange(len(seq) - 1), torch.tensor(seq[1:])][-8:]
    assert c.logprobs == pytest.approx(ref.tolist(), abs=1e-4)
    assert c.cumulative_logprob == pytest.approx(sum(c.logprobs))


@pytest.mark.parametrize("family", FAMILIES)
def test_one_beam_equals_greedy(family):
    model = tiny(family, scale=3.0)
    prompts = [TOK.encode("abc"), TOK.encode("j")]
    greedy = run(model, prompts, max_new_tokens=20)
    beam = run(model, prompts, strategy="beam", num_beams=1, max_new_tokens=20)
    for g, b in zip(greedy, beam, strict=True):
        assert b[0].token_ids == g[0].token_ids
        assert b[0].text == g[0].text
        assert b[0].finish_reason == g[0].finish_reason


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_beats_greedy_and_is_sorted(family, length_penalty):
    model = tiny(family, seed=3)
    prompts = [TOK.encode(p) for p in ("abc", "é€", "", "j.j")]
    greedy = run(model, prompts, max_new_tokens=12)
    beams = run(model, prompts, strategy="beam", num_beams=4, num_return_sequences=4, max_new_tokens=12,
                length_penalty=length_penalty)

    def norm(c: Completion) -> float:
        return c.cumulative_logprob / len(c.token_ids) ** length_penalty

    for g, b in zip(greedy, beams, strict=True):
        assert len(b) == 4
        scores = [norm(c) for c in b]
        assert scores == sorted(scores, reverse=True)
        assert scores[0] >= norm(g[0]) - 1e-4
        assert len({tuple(c.token_ids) for c in b}) == 4  # distinct hypotheses


def test_top_k_one_equals_greedy():
    model = tiny("transformer", scale=2.0)
    prompts = [TOK.encode("abc"), TOK.encode("ded")]
    greedy = run(model, prompts, max_new_tokens=20)
    sampled = run(model, prompts, strategy="sample", top_k=1, temperature=1.5, seed=7, max_new_tokens=20)
    zero_t = run(model, prompts, strategy="sample", temperature=0.0, max_new_tokens=20)
    for g, s, z in zip(greedy, sampled, zero_t, strict=True):
        assert s[0].token_ids == g[0].token_ids == z[0].token_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_seeds(family):
    model = tiny(family)
    prompt = [TOK.encode("abc")]
    kw = dict(strategy="sample", max_new_tokens=24, stop_at_eos=False)
    a = run(model, prompt, seed=1, **kw)[0][0]
    b = run(model, prompt, seed=1, **kw)[0][0]
    c = run(model, prompt, seed=2, **kw)[0][0]
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.token_ids != c.token_ids
    two = run(model, prompt, seed=1, num_return_sequences=2, **kw)[0]
    assert two[0].token_ids == a.token_ids  # sample i of a request depends only on (seed, i)
    assert two[1].token_ids != a.token_ids


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kw", [
    dict(strategy="greedy"),
    dict(strategy="sample", seed=5, top_p=0.9, top_k=50, temperature=0.8),
    dict(strategy="sample", seed=6, min_p=0.05, repetition_penalty=1.3, no_repeat_ngram_size=2),
    dict(strategy="beam", num_beams=3, num_return_sequences=2),
])
def test_batched_equals_one_by_one(family, kw):
    model = tiny(family, block_size=16, scale=2.0)
    prompts = [TOK.encode(p) for p in ("a", "abcdefghij abc", "", "é€ é", "ji")]
    params = GenerationParams(max_new_tokens=24, **kw)
    together = generate(model, TOK, prompts, params)
    for prompt, result in zip(prompts, together, strict=True):
        alone = generate(model, TOK, [prompt], params)[0]
        assert [c.token_ids for c in result] == [c.token_ids for c in alone]
        assert [c.text for c in result] == [c.text for c in alone]
        for x, y in zip(result, alone, strict=True):
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-4)


def test_strings_and_ids_agree():
    model = tiny("rnn")
    by_text = run(model, ["abc"], max_new_tokens=10)
    by_ids = run(model, [TOK.encode("abc")], max_new_tokens=10)
    assert by_text == by_ids


def test_stop_string_across_tokens():
    model = tiny("transformer", scale=3.0)
    [[free]] = run(model, ["ab"], max_new_tokens=30, stop_at_eos=False)
    text = free.text
    assert len(text) >= 6, text
    stop = text[3:6]  # three characters: at least two tokens, so it spans a token boundary
    [[c]] = run(model, ["ab"], max_new_tokens=30, stop_at_eos=False, stop=(stop, "never"))
    assert c.finish_reason == "stop"
    assert c.text == text[: text.index(stop)]
    assert stop not in c.text
    # The tokens that completed the stop string are reported, as in vLLM.
    assert TOK.decode(c.token_ids).endswith(stop)
    assert c.token_ids == free.token_ids[: len(c.token_ids)]


def test_eos_ends_generation():
    model = tiny("transformer")
    # Make <eos> the most likely token once the context holds 6 tokens.
    original = model.forward

    def forward(tokens, state=None, **kw):
        logits, state = original(tokens, state, **kw)
        logits = logits.clone()
        if state is not None and int(state.next_pos.max()) >= 6:
            logits[..., EOS] = 1e4
        return logits, state

    model.forward = forward
    [[c]] = run(model, ["abc"], max_new_tokens=20)
    assert c.finish_reason == "eos"
    assert c.token_ids[-1] == EOS and EOS not in c.token_ids[:-1]
    assert c.text == TOK.decode(c.token_ids[:-1])
    [[d]] = run(model, ["abc"], max_new_tokens=20, stop_at_eos=False)
    assert d.finish_reason == "length" and len(d.token_ids) == 20


def test_zero_new_tokens_and_several_samples():
    model = tiny("rnn")
    [[c]] = run(model, ["abc"], max_new_tokens=0)
    assert c == Completion("", [], [], 0.0, "length", 3)
    out = run(model, ["abc", "d"], strategy="sample", seed=0, num_return_sequences=3, max_new_tokens=5)
    assert [len(o) for o in out] == [3, 3]
    assert all(len(c.token_ids) == 5 and math.isfinite(c.cumulative_logprob) for o in out for c in o)


def test_no_repeat_ngram_and_repetition_penalty():
    model = tiny("transformer", scale=3.0)
    [[plain]] = run(model, ["ab"], max_new_tokens=30, stop_at_eos=False)
    ids = plain.token_ids
    assert len(set(zip(ids, ids[1:], strict=False))) < len(ids) - 1  # a peaked model repeats itself

    [[c]] = run(model, ["ab"], max_new_tokens=30, stop_at_eos=False, no_repeat_ngram_size=2)
    seq = START + TOK.encode("ab") + c.token_ids
    bigrams = list(zip(seq, seq[1:], strict=False))
    assert len(bigrams) == len(set(bigrams))

    [[r]] = run(model, ["ab"], max_new_tokens=30, stop_at_eos=False, repetition_penalty=5.0)
    assert len(set(r.token_ids)) > len(set(ids))
