"""The step-wise session: continuous batching, cancellation, admission limits, bounded state,
and streaming text deltas that never split a character."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lm.config import RNNConfig, TransformerConfig
from lm.decoding.engine import DecodeSession
from lm.decoding.generate import generate
from lm.decoding.params import DoneEvent, FinishEvent, GenerationParams, ParamError, TokenEvent
from lm.models import RNNState, build_model
from lm.pipeline import Pipeline
from tokenizer import CharTokenizer

TOK = CharTokenizer(list("abcdefghij .,é€"))
EOS = TOK.eos_id




def tiny(family: str, block_size: int = 24):
    torch.manual_seed(1)
    if family == "transformer":
        cfg = TransformerConfig(vocab_size=TOK.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32)
    else:
        cfg = RNNConfig(vocab_size=TOK.vocab_size, n_embd=32, n_hidden=32, n_layer=1)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(2.0)
    return model


class ScriptedLM(nn.Module):
    """Emits ``script`` after a context of ``start`` tokens, then <eos>: a model whose output we
    choose, to drive the detokenizer through multi-byte characters."""

    max_context = None

    def __init__(self, script: list[int], start: int, vocab_size: int) -> None:
        super().__init__()
        self.script, self.start, self.vocab_size = script, start, vocab_size
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, tokens, state=None, *, pad_mask=None, use_cache=True):  # noqa: ARG002
        B, T = tokens.shape
        seen = torch.zeros(B) if state is None else state.h[0, :, 0]
        real = torch.ones(B, T) if pad_mask is None else pad_mask.float()
        counts = seen[:, None] + real.cumsum(1)  # tokens seen up to and including each position
        logits = torch.full((B, T, self.vocab_size), -10.0)
        for b in range(B):
            for t in range(T):
                i = int(counts[b, t]) - self.start
                logits[b, t, self.script[i] if 0 <= i < len(self.script) else EOS] = 10.0
        return logits, RNNState(counts[:, -1].reshape(1, B, 1))


def collect(session: DecodeSession) -> tuple[dict, dict]:
    """Run a session dry: (completions by (request, index), streamed text by (request, index))."""
    done, streamed = {}, {}
    while session.active:
        for e in session.step():
            if isinstance(e, DoneEvent):
                continue
            key = (e.request_id, e.index)
            streamed[key] = streamed.get(key, "") + e.text
            if isinstance(e, FinishEvent):
                done[key] = e.completion
    return done, streamed


@pytest.mark.parametrize("family", ["transformer", "rnn"])
def test_continuous_batching_matches_alone(family):
    """Requests joining a running batch mid-way decode exactly as they would alone."""
    model = tiny(family)
    requests = {
        "g1": (TOK.encode("abc"), GenerationParams(max_new_tokens=30, stop_at_eos=False)),
        "s1": (TOK.encode("j"), GenerationParams(strategy="sample", seed=3, max_new_tokens=20, stop_at_eos=False)),
        "g2": (TOK.encode("é€ ab"), GenerationParams(max_new_tokens=12, stop_at_eos=False)),
        "s2": (TOK.encode(""), GenerationParams(strategy="sample", seed=4, top_p=0.8, num_return_sequences=2,
                                               max_new_tokens=15, stop_at_eos=False)),
        "b1": (TOK.encode("cab"), GenerationParams(strategy="beam", num_beams=3, max_new_tokens=10)),
    }
    session = DecodeSession(model, TOK)
    order = list(requests)
    done, rows_seen = {}, []
    for step in range(200):
        if step % 4 == 0 and order:  # a new request every fourth step
            rid = order.pop(0)
            session.add(rid, *requests[rid])
        for e in session.step():
            if isinstance(e, FinishEvent):
                done[(e.request_id, e.index)] = e.completion
        rows_seen.append(session.rows)
        if not session.active and not order:
            break
    assert session.active == 0 and session.rows == 0
    assert max(rows_seen) >= 4  # requests really overlapped
    for rid, (prompt, params) in requests.items():
        alone = generate(model, TOK, [prompt], params)[0]
        for i, c in enumerate(alone):
            assert done[(rid, i)].token_ids == c.token_ids, rid
            assert done[(rid, i)].text == c.text


def test_finished_rows_leave_and_state_stays_bounded():
    """Rows leave as they finish; with requests joining and leaving for many steps, the cache
    holds only the slots live rows use (it does not grow with the session's age)."""
    model = tiny("transformer", block_size=64)
    session = DecodeSession(model, TOK, max_batch_rows=8)
    lengths = []
    for step in range(300):
        if step % 3 == 0:
            session.add(step, TOK.encode("ab"), GenerationParams(max_new_tokens=9, stop_at_eos=False))
        session.step()
        if session._sampled.state is not None:
            lengths.append(session._sampled.state.length)
    assert session.rows <= 4
    assert max(lengths) <= 3 + 9 + 2  # <eos>+prompt, new tokens, the join offset


def test_cancel_and_admission_limit():
    model = tiny("rnn")
    session = DecodeSession(model, TOK, max_batch_rows=2)
    params = GenerationParams(max_new_tokens=50, stop_at_eos=False)
    for rid in "abc":
        session.add(rid, TOK.encode("a"), params)
    session.step()
    assert session.active == 3 and session.rows == 2  # the third waits for room
    session.cancel("a")
    assert session.active == 2 and session.rows == 1
    session.step()
    assert session.rows == 2  # "c" was admitted
    session.cancel("c")
    session.cancel("missing")  # unknown ids are ignored
    done, _ = collect(session)
    assert set(done) == {("b", 0)}
    with pytest.raises(ParamError, match="num_beams must be <= 2"):
        session.add("d", [4], GenerationParams(strategy="beam", num_beams=3))
    with pytest.raises(ParamError, match="prompt token ids"):
        session.add("e", [TOK.vocab_size], params)
    session.add("f", [], params)
    with pytest.raises(ValueError, match="already active"):
        session.add("f", [], params)


TEXT = "ab😀c中ü€d"  # 😀, 中 and ü are not in the vocabulary: UTF-8 byte tokens


@pytest.mark.parametrize("kw", [
    dict(),
    dict(strategy="sample", seed=0, top_k=1, num_return_sequences=2),
])
def test_streamed_deltas_are_whole_characters(kw):
    script = TOK.encode(TEXT)
    assert len(script) > len(TEXT)  # byte fallback really happened
    prompt = TOK.encode("a")
    model = ScriptedLM(script, len(prompt) + 1, TOK.vocab_size)
    params = GenerationParams(max_new_tokens=100, **kw)
    session = DecodeSession(model, TOK)
    session.add("r", prompt, params)
    deltas: dict[int, list[str]] = {}
    done = {}
    while session.active:
        for e in session.step():
            if isinstance(e, TokenEvent):
                deltas.setdefault(e.index, []).append(e.text)
            elif isinstance(e, FinishEvent):
                done[e.index] = e.completion
    for i, c in done.items():
        assert c.text == TEXT and c.finish_reason == "eos"
        assert "".join(deltas[i]) == c.text
        assert all("\ufffd" not in d for d in deltas[i])
        assert "" in deltas[i]  # some tokens were held back mid-character


def test_stream_cut_mid_character_and_stop_across_bytes():
    script = TOK.encode(TEXT)
    prompt = TOK.encode("a")
    model = ScriptedLM(script, len(prompt) + 1, TOK.vocab_size)
    pipe = Pipeline(model, TOK, None, name="scripted")  # type: ignore[arg-type]
    # Stop after two of 😀's four bytes: the text ends as decode() would, with U+FFFD.
    params = GenerationParams(max_new_tokens=4)
    events = list(pipe.stream("a", params))
    [c] = [e.completion for e in events if isinstance(e, FinishEvent)]
    assert c.finish_reason == "length"
    assert c.text == TOK.decode(c.token_ids) and c.text.endswith("\ufffd")
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == c.text
    # A stop string made of byte-fallback characters, spanning many tokens.
    params = GenerationParams(max_new_tokens=100, stop=("中ü",))
    events = list(pipe.stream("a", params))
    [c] = [e.completion for e in events if isinstance(e, FinishEvent)]
    assert c.finish_reason == "stop" and c.text == "ab😀c"
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == "ab😀c"
    # Beam search reports the same text.
    [[b]] = pipe.generate(["a"], GenerationParams(strategy="beam", num_beams=2, max_new_tokens=100, stop=("中ü",)))
    assert b.text == "ab😀c" and b.finish_reason == "stop" and b.token_ids == c.token_ids


def test_beam_requests_reserve_their_beams():
    """A beam request starts as one row; admission still counts the rows its beams will take."""
    model = tiny("transformer")
    session = DecodeSession(model, TOK, max_batch_rows=8)
    params = GenerationParams(strategy="beam", num_beams=4, max_new_tokens=6)
    for rid in range(3):
        session.add(rid, TOK.encode("ab"), params)
    peak = 0
    while session.active:
        session.step()
        peak = max(peak, session.rows)
    assert peak == 8
