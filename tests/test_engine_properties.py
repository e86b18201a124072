"""Nothing a request asks for can crash, hang or corrupt the engine.

A property-based test drives ``generate`` with random valid parameter combinations -- every
strategy and option, the extreme values the schema allows, bans as large as the vocabulary,
tiny vocabularies, both families, alone and batched -- and checks what a client relies on:
exactly ``num_return_sequences`` completions per prompt, ids in the vocabulary, finite
log-probabilities, a valid finish reason, no stop string in the text, batching that changes
nothing. The hand-picked cases the property test must cover are pinned as regular tests too.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lm.config import RNNConfig, TransformerConfig
from lm.decoding.beam import rank_key
from lm.decoding.engine import DecodeSession
from lm.decoding.generate import generate
from lm.decoding.params import FINISH_REASONS, DoneEvent, FinishEvent, GenerationParams, TokenEvent
from lm.models import build_model
from tokenizer import CharTokenizer

TINY = CharTokenizer(list("ab\n"), unk_policy="unk")  # 7 ids: a vocabulary a ban can empty
SMALL = CharTokenizer(list("abcde \n"), unk_policy="unk")  # 11 ids


def model_for(tok: CharTokenizer, family: str, seed: int = 0):
    torch.manual_seed(seed)
    if family == "transformer":
        cfg = TransformerConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    else:
        cfg = RNNConfig(vocab_size=tok.vocab_size, n_embd=16, n_hidden=16, n_layer=1)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)  # peaked distributions: <eos> is not the only thing that happens
    return model


MODELS = {(tok_name, family): model_for(tok, family)
          for tok_name, tok in (("tiny", TINY), ("small", SMALL)) for family in ("transformer", "rnn")}
TOKENIZERS = {"tiny": TINY, "small": SMALL}

EXTREME_FLOATS = [1e-39, 1e-46, 1e-300, 1e-50, 1e50, 1e300, 2000.0, -2000.0, 1e308, -1e308, 0.0]


@st.composite
def params(draw) -> GenerationParams:  # noqa: ANN001
    strategy = draw(st.sampled_from(["greedy", "sample", "beam"]))
    num_beams = draw(st.integers(1, 6))
    n = draw(st.integers(1, num_beams if strategy == "beam" else 3))
    positive = st.one_of(st.floats(1e-3, 5.0), st.sampled_from([1e-39, 1e-46, 1e-300, 1e-50, 1e50, 1e300]))
    return GenerationParams(
        strategy=strategy,
        max_new_tokens=draw(st.integers(0, 14)),
        temperature=draw(st.one_of(st.floats(0.0, 3.0),
                                   st.sampled_from([0.0, 1e-39, 1e-46, 1e-300, 50.0, 3.5e38, 1e39, 2e307, 1.7e308]))),
        top_k=draw(st.integers(0, 12)),
        top_p=draw(st.one_of(st.floats(1e-6, 1.0), st.sampled_from([1.0, 1e-46, 1e-300, 0.5]))),
        min_p=draw(st.one_of(st.floats(0.0, 0.999), st.just(0.0))),
        repetition_penalty=draw(st.one_of(st.just(1.0), positive)),
        seed=draw(st.integers(0, 2**31)),  # seeded: batched must equal alone
        num_beams=num_beams,
        length_penalty=draw(st.one_of(st.floats(-5.0, 5.0), st.sampled_from(EXTREME_FLOATS))),
        early_stopping=draw(st.booleans()),
        num_return_sequences=n,
        no_repeat_ngram_size=draw(st.sampled_from([0, 0, 1, 1, 2, 3])),
        stop=tuple(draw(st.lists(st.sampled_from(["a", "b", "ab", "ba", "\n", "c d"]), max_size=2))),
        stop_at_eos=draw(st.booleans()),
    )


def check_completions(tok: CharTokenizer, p: GenerationParams, results: list) -> None:
    for per_prompt in results:
        assert len(per_prompt) == p.num_return_sequences
        for c in per_prompt:
            assert c.finish_reason in FINISH_REASONS
            assert all(0 <= t < tok.vocab_size for t in c.token_ids)
            assert len(c.token_ids) == len(c.logprobs) <= p.max_new_tokens
            assert all(math.isfinite(x) and x <= 1e-6 for x in c.logprobs)
            assert math.isfinite(c.cumulative_logprob)
            assert not any(s in c.text for s in p.stop)
            if c.finish_reason == "eos":
                assert p.stop_at_eos and c.token_ids[-1] == tok.eos_id
            if p.no_repeat_ngram_size == 1:
                assert len(set(c.token_ids)) == len(c.token_ids)  # a 1-gram ban means no repeats


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=params(), tok_name=st.sampled_from(["tiny", "small"]), family=st.sampled_from(["transformer", "rnn"]),
       prompts=st.lists(st.text(alphabet="ab\n", max_size=5), min_size=1, max_size=3))
def test_any_valid_parameters_decode_cleanly(p, tok_name, family, prompts):
    tok, model = TOKENIZERS[tok_name], MODELS[(tok_name, family)]
    together = generate(model, tok, prompts, p)
    check_completions(tok, p, together)
    if p.strategy != "sample" or p.temperature == 0:
        for prompt, batched in zip(prompts, together, strict=True):
            [alone] = generate(model, tok, [prompt], p)
            assert [c.token_ids for c in alone] == [c.token_ids for c in batched]
    else:  # seeded rows draw from their own generators: batching changes nothing either
        [alone] = generate(model, tok, prompts[:1], p)
        assert [c.token_ids for c in alone] == [c.token_ids for c in together[0]]


@pytest.mark.parametrize("family", ["transformer", "rnn"])
@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_a_ban_that_empties_the_vocabulary_ends_the_row(family, strategy):
    """``no_repeat_ngram_size=1`` with more new tokens than ids: the row ends as ``banned``
    after at most the vocabulary's worth of tokens, never emitting an id out of range or
    ``<pad>`` with NaN."""
    tok, model = TINY, MODELS[("tiny", family)]
    p = GenerationParams(strategy=strategy, seed=1, max_new_tokens=40, no_repeat_ngram_size=1, stop_at_eos=False,
                         num_beams=4, num_return_sequences=4 if strategy == "beam" else 2)
    [completions] = generate(model, tok, ["ab"], p)
    check_completions(tok, p, [completions])
    assert {c.finish_reason for c in completions} == {"banned"}
    for c in completions:
        assert not {tok.encode("a")[0], tok.encode("b")[0]} & set(c.token_ids)  # the prompt's ids are banned
        assert len(c.token_ids) <= tok.vocab_size


def test_the_text_start_is_never_banned_or_penalised():
    """``<eos>`` is a word model's text start; ``no_repeat_ngram_size=1`` must still let it end
    the text (it is context, not a token the request wrote)."""
    from tokenizer import WordTokenizer

    tok = WordTokenizer(["a", "b"])
    torch.manual_seed(0)
    model = build_model(RNNConfig(vocab_size=tok.vocab_size, n_embd=8, n_hidden=8, n_layer=1)).eval()
    session = DecodeSession(model, tok)
    assert session.context.start == (tok.eos_id,)

    class AlwaysEos(torch.nn.Module):
        max_context = None

        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, tokens, state=None, **kw):  # noqa: ANN001, ANN003
            logits, state = self.inner(tokens, state, **kw)
            logits = logits.clone()
            logits[..., tok.eos_id] = 100.0
            return logits, state

    for penalty in (1.0, 1e30):
        [[c]] = generate(AlwaysEos(), tok, ["a"], GenerationParams(max_new_tokens=5, no_repeat_ngram_size=1,
                                                                   repetition_penalty=penalty))
        assert c.finish_reason == "eos" and c.token_ids == [tok.eos_id]


@pytest.mark.parametrize("options", [
    dict(strategy="sample", temperature=1e-39),
    dict(strategy="sample", temperature=1e-46),
    # found by the schema fuzzer: 2e307 rounds to inf in float32, and a banned -inf / inf is NaN
    dict(strategy="sample", temperature=2.1e307, min_p=0.63, top_k=48, no_repeat_ngram_size=2),
    dict(strategy="sample", temperature=1.7e308, repetition_penalty=3.6e307),
    dict(strategy="sample", top_p=1e-46),
    dict(strategy="sample", repetition_penalty=1e-50),
    dict(strategy="greedy", repetition_penalty=1e300),
    dict(strategy="beam", length_penalty=2000.0),
    dict(strategy="beam", length_penalty=1e308),
    dict(strategy="beam", length_penalty=-1e308),
    dict(strategy="beam", no_repeat_ngram_size=1, stop_at_eos=False, num_return_sequences=4),
])
def test_extreme_values_the_schema_allows(options):
    tok, model = SMALL, MODELS[("small", "transformer")]
    p = GenerationParams(max_new_tokens=30, seed=3, **options)
    results = generate(model, tok, ["ab", "c"], p)
    check_completions(tok, p, results)


def test_tiny_temperature_samples_the_greedy_choice():
    tok, model = SMALL, MODELS[("small", "rnn")]
    [[greedy]] = generate(model, tok, ["ab"], GenerationParams(max_new_tokens=12, stop_at_eos=False))
    [[cold]] = generate(model, tok, ["ab"], GenerationParams(strategy="sample", temperature=1e-39, seed=5,
                                                             max_new_tokens=12, stop_at_eos=False))
    assert cold.token_ids == greedy.token_ids


def test_rank_key_orders_like_the_length_normalised_score():
    cases = [(-3.0, 2), (-1.0, 5), (-7.5, 9), (-0.2, 1), (-4.0, 4), (0.0, 3)]
    for penalty in (0.0, 0.5, 1.0, 2.0, -1.0):
        score = sorted(cases, key=lambda c: c[0] / c[1] ** penalty)
        ranked = sorted(cases, key=lambda c: rank_key(c[0], c[1], penalty))
        assert [c for c in score] == [c for c in ranked]
    for penalty in (2000.0, 1e308, -1e308):
        assert not math.isnan(rank_key(-3.0, 7, penalty))


def test_each_request_ends_with_its_finish_events_then_done():
    """The engine says when a request is complete (``DoneEvent``), after exactly
    ``num_return_sequences`` finish events -- for beam search even when bans leave fewer
    distinct hypotheses -- and the streamed deltas plus the finish's held-back text are the
    completion's text."""
    tok, model = TINY, MODELS[("tiny", "transformer")]
    session = DecodeSession(model, tok, max_batch_rows=16)
    asks = {
        "beam": GenerationParams(strategy="beam", num_beams=6, num_return_sequences=6, no_repeat_ngram_size=1,
                                 stop_at_eos=False, max_new_tokens=20),
        "greedy": GenerationParams(no_repeat_ngram_size=1, stop_at_eos=False, max_new_tokens=20, stop=("ba",)),
        "sample": GenerationParams(strategy="sample", seed=2, num_return_sequences=3, max_new_tokens=20),
    }
    for rid, p in asks.items():
        session.add(rid, tok.encode("a"), p)
    finishes: dict[str, list[FinishEvent]] = {rid: [] for rid in asks}
    streamed: dict[tuple[str, int], str] = {}
    done: list[str] = []
    for _ in range(200):
        if not session.active:
            break
        for e in session.step():
            if isinstance(e, DoneEvent):
                assert e.request_id not in done
                assert len(finishes[e.request_id]) == asks[e.request_id].num_return_sequences
                done.append(e.request_id)
                continue
            assert e.request_id not in done
            if isinstance(e, TokenEvent):
                streamed[(e.request_id, e.index)] = streamed.get((e.request_id, e.index), "") + e.text
            else:
                finishes[e.request_id].append(e)
                if asks[e.request_id].strategy != "beam":
                    key = (e.request_id, e.index)
                    assert streamed.get(key, "") + e.text == e.completion.text
    assert sorted(done) == sorted(asks) and not session.active


# -- the same property through the server's scheduler -------------------------------------------


@pytest.fixture(scope="module")
def scheduler():  # noqa: ANN201
    from service.metrics import Metrics
    from service.scheduler import Scheduler

    model = MODELS[("small", "transformer")]
    s = Scheduler("small", lambda rows: DecodeSession(model, SMALL, max_batch_rows=rows), max_queue=64,
                  max_batch_rows=32, metrics=Metrics())
    s.start()
    yield s
    s.stop()


GOOD = [("ab", GenerationParams(max_new_tokens=14, stop_at_eos=False)),
        ("c", GenerationParams(strategy="sample", seed=9, num_return_sequences=2, max_new_tokens=14)),
        ("ba", GenerationParams(strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=10))]


def through(scheduler, jobs: list[tuple[str, GenerationParams]]) -> list[list[tuple]]:  # noqa: ANN001
    """Submit every job at once (one HTTP request each) and collect their completions."""
    import asyncio

    async def one(i: int, prompt: str, p: GenerationParams) -> list[tuple]:
        sub = scheduler.submit([(SMALL.encode(prompt), p)], f"r{i}", stream=False)
        out: dict[int, tuple] = {}
        async for _, event in sub.events(asyncio.get_running_loop().time() + 30):
            if isinstance(event, FinishEvent):
                out[event.index] = (tuple(event.completion.token_ids), event.completion.finish_reason)
        return [out[k] for k in sorted(out)]

    async def run() -> list[list[tuple]]:
        return await asyncio.gather(*(one(i, prompt, p) for i, (prompt, p) in enumerate(jobs)))

    return asyncio.run(run())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(hostile=st.lists(params(), min_size=1, max_size=3), where=st.integers(0, 3))
def test_hostile_requests_never_change_the_others_results(scheduler, hostile, where):  # noqa: ANN001
    alone = through(scheduler, GOOD)
    mixed = GOOD[:where] + [("ab", p) for p in hostile] + GOOD[where:]
    results = through(scheduler, mixed)
    good = results[:where] + results[where + len(hostile):]
    assert good == alone
    for p, got in zip(hostile, results[where : where + len(hostile)], strict=True):
        assert len(got) == p.num_return_sequences
    assert scheduler.depth == 0
