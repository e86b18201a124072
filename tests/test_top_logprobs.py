"""``top_logprobs``: the most likely tokens at each generated position, checked against an
independent teacher-forced forward pass over the prompt and the generated tokens (not the
engine's incremental decode state), for every strategy and both model families."""

from __future__ import annotations

import pytest
import torch

from lm.config import RNNConfig, TransformerConfig
from lm.context import TextContext
from lm.decoding.generate import generate
from lm.decoding.params import GenerationParams, ParamError
from lm.models import build_model
from tokenizer import CharTokenizer

TOK = CharTokenizer(list("abcdefghij .,"))


def tiny(family: str):
    torch.manual_seed(3)
    if family == "transformer":
        cfg = TransformerConfig(vocab_size=TOK.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)
    else:
        cfg = RNNConfig(vocab_size=TOK.vocab_size, n_embd=32, n_hidden=32, n_layer=1)
    return build_model(cfg).eval()


def reference_logp(model, context: list[int], generated: list[int]) -> torch.Tensor:
    """log_softmax of the logits that predicted each generated token, from one full forward."""
    ids = torch.tensor([context + generated])
    with torch.no_grad():
        logits, _ = model(ids[:, :-1], None, use_cache=False)
    return logits[0, len(context) - 1 :].float().log_softmax(-1)


@pytest.mark.parametrize("family", ["transformer", "rnn"])
@pytest.mark.parametrize("options", [
    {"strategy": "greedy"},
    {"strategy": "sample", "seed": 5, "temperature": 1.3, "top_k": 6},
    {"strategy": "beam", "num_beams": 3, "num_return_sequences": 2},
])
def test_alternatives_match_a_teacher_forced_pass(family: str, options: dict) -> None:
    model = tiny(family)
    context = TextContext(start=(), max_length=64 if family == "transformer" else None)
    params = GenerationParams(max_new_tokens=10, top_logprobs=4, stop_at_eos=False, **options)
    prompt = TOK.encode("abc de")
    for c in generate(model, TOK, [prompt], params, context=context)[0]:
        assert len(c.top_logprobs) == len(c.token_ids) == len(c.logprobs)
        ref = reference_logp(model, prompt, c.token_ids)
        for pos, (token, lp, top) in enumerate(zip(c.token_ids, c.logprobs, c.top_logprobs, strict=True)):
            assert len(top) == 4
            values, ids = ref[pos].topk(4)
            assert [t for t, _ in top] == ids.tolist()
            assert [v for _, v in top] == pytest.approx(values.tolist(), abs=1e-4)
            assert [v for _, v in top] == sorted((v for _, v in top), reverse=True)
            assert lp == pytest.approx(float(ref[pos, token]), abs=1e-4)
            if options["strategy"] == "greedy":
                assert top[0][0] == token


def test_no_alternatives_unless_asked_and_the_count_is_bounded() -> None:
    model = tiny("transformer")
    c = generate(model, TOK, ["ab"], GenerationParams(max_new_tokens=3, stop_at_eos=False))[0][0]
    assert c.top_logprobs == []
    with pytest.raises(ParamError, match="top_logprobs"):
        GenerationParams(top_logprobs=21)
    with pytest.raises(ParamError, match="top_logprobs"):
        GenerationParams(top_logprobs=-1)


def test_a_request_asking_for_alternatives_leaves_its_neighbours_unchanged() -> None:
    """Batched with a request that asks for 5 alternatives, a seeded sample decodes the same."""
    model = tiny("transformer")
    seeded = GenerationParams(strategy="sample", seed=11, max_new_tokens=12, stop_at_eos=False)
    alone = generate(model, TOK, ["abc"], seeded)[0][0]
    from lm.decoding.engine import DecodeSession

    session = DecodeSession(model, TOK, max_batch_rows=8)
    session.add("a", TOK.encode("abc"), seeded)
    session.add("b", TOK.encode("j,"), GenerationParams(max_new_tokens=12, top_logprobs=5, stop_at_eos=False))
    done = {}
    while session.active:
        for event in session.step():
            if hasattr(event, "completion"):
                done[event.request_id] = event.completion
    assert done["a"].token_ids == alone.token_ids
    assert done["a"].top_logprobs == []
    assert all(len(t) == 5 for t in done["b"].top_logprobs)


@pytest.mark.parametrize("family", ["transformer", "rnn"])
def test_the_scorer_keeps_each_prompt_positions_alternatives(family: str) -> None:
    """What ``echo`` with ``logprobs`` returns for the prompt: per scored token, the most likely
    tokens under the same teacher-forced pass (windows for a Transformer, chunks for an RNN)."""
    from lm.score import ScoreJob, score_results

    model = tiny(family)
    context = TextContext(start=(TOK.encode(" ")[0],), max_length=64 if family == "transformer" else None)
    texts = ["abc de fg", "j,i"]
    seqs = [TOK.encode(t) for t in texts]
    job = ScoreJob(model, seqs, context=context, top=3)
    while not job.step():
        pass
    results = score_results(texts, job.result(), token_logprobs=True, tops=job.top_result())
    for seq, r in zip(seqs, results, strict=True):
        ref = reference_logp(model, list(context.start), seq)
        assert len(r.top_logprobs) == len(seq) == len(r.token_logprobs)
        for pos, (token, lp, top) in enumerate(zip(seq, r.token_logprobs, r.top_logprobs, strict=True)):
            values, ids = ref[pos].topk(3)
            assert [t for t, _ in top] == ids.tolist()
            assert [v for _, v in top] == pytest.approx(values.tolist(), abs=1e-4)
            assert lp == pytest.approx(float(ref[pos, token]), abs=1e-4)
    plain = ScoreJob(model, seqs, context=context)
    while not plain.step():
        pass
    assert [x.tolist() for x in plain.result()] == [x.tolist() for x in job.result()]


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_an_alternative_reads_as_it_would_in_the_text(kind: str, tmp_path) -> None:  # noqa: ANN001
    """Word and sentencepiece tokenizers space tokens by their neighbours: an alternative's
    text is what it would add after the tokens before it, and a byte token that is only part of
    a character reads as its byte, OpenAI's way."""
    from lm.decoding.streaming import candidate_pieces, piece_bytes

    def candidate_piece(tok, before, token):  # noqa: ANN001, ANN202
        return candidate_pieces(tok, before, [token])[0]
    from tokenizer import train_tokenizer

    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat\nthe dog sat on the log\n" * 20, encoding="utf-8")
    tok = train_tokenizer(kind, [corpus], None if kind == "word" else 300)
    before = tok.encode("the cat")
    for word in ("sat", "dog"):
        [token] = [t for t in tok.encode(" " + word) if tok.decode([t]).strip()][-1:]
        piece = candidate_piece(tok, before, token)
        assert tok.decode(before) + piece == tok.decode([*before, token])
        assert piece.strip() == tok.decode([token]).strip() and piece.startswith(" ") == (kind == "word" or piece.startswith(" "))
    if kind == "bpe":
        euro = tok.encode("€")
        assert len(euro) == 3  # unseen: three byte tokens
        first = candidate_piece(tok, before, euro[0])
        assert first == "bytes:\\xe2" and piece_bytes(first) == b"\xe2"
        assert candidate_piece(tok, [*before, *euro[:2]], euro[2]) == "€"
