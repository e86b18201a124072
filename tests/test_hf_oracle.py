"""transformers as the oracle: an lmforge Transformer exported with ``lmforge export --format hf``
and loaded by ``AutoModelForCausalLM`` -- an independent implementation of the same weights --
must agree with lmforge on logits, greedy decoding, beam search and perplexity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lm.checkpoint import save_checkpoint  # noqa: E402
from lm.cli import main  # noqa: E402
from lm.config import RNNConfig, TransformerConfig  # noqa: E402
from lm.context import TextContext  # noqa: E402
from lm.decoding.generate import generate  # noqa: E402
from lm.decoding.params import GenerationParams  # noqa: E402
from lm.hf_export import export_hf  # noqa: E402
from lm.models import build_model  # noqa: E402
from lm.score import score_ids  # noqa: E402
from tokenizer import CharTokenizer  # noqa: E402

TOK = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz .,\n"))
PYTHIA = {"parallel_residual": True, "rotary_fraction": 0.25, "activation": "gelu"}
LLAMA = {"norm": "rmsnorm", "norm_eps": 1e-6, "gated_mlp": True, "activation": "silu", "mlp_hidden": 88,
         "rope_base": 50000.0}
LLAMA_GQA = {**LLAMA, "n_kv_head": 2}
VARIANTS = [  # (positions, biases, tied head, other knobs)
    ("rope", False, True, {}), ("rope", True, False, {}), ("learned", False, True, {}), ("learned", True, False, {}),
    ("rope", True, False, PYTHIA), ("learned", True, True, {"activation": "gelu"}),
    ("rope", False, False, LLAMA_GQA), ("rope", True, True, LLAMA),
]
KNOB_NAMES = {id(PYTHIA): "-pythia", id(LLAMA): "-llama", id(LLAMA_GQA): "-llama-gqa"}


def lmforge_model(pos: str, bias: bool, tie: bool, extra: dict | None = None, block_size: int = 128) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=TOK.vocab_size, block_size=block_size, n_layer=2, n_head=4, n_embd=32,
                            pos_emb=pos, bias=bias, tie_weights=tie, **(extra or {}))
    model = build_model(cfg).eval()
    with torch.no_grad():  # random weights with some structure, so greedy and beams have a spread
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: f"{v[0]}-{'bias' if v[1] else 'nobias'}-"
                                                               f"{'tied' if v[2] else 'untied'}"
                                                               + KNOB_NAMES.get(id(v[3]), "-gelu" if v[3] else ""))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    model = lmforge_model(*request.param)
    out = tmp_path_factory.mktemp("hf")
    export_hf(model, out)
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # every weight in the file, none missing or left over
    return model, hf.eval(), out


def prompts() -> list[list[int]]:
    return [TOK.encode(t) for t in ("the cat sat", "a", "on the mat, and then it ran\naway")]


def test_logits_match_prompts_of_several_lengths_batched_with_padding(pair) -> None:  # noqa: ANN001
    model, hf, _ = pair
    ps = prompts()
    width = max(map(len, ps))
    ids = torch.tensor([p + [0] * (width - len(p)) for p in ps])
    mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in ps])
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits
        for row, p in enumerate(ps):
            ours = model(torch.tensor([p]), None, use_cache=False)[0][0]
            torch.testing.assert_close(ours, theirs[row, : len(p)], atol=1e-5, rtol=1e-5)


def test_greedy_is_token_for_token_the_same_for_64_steps(pair) -> None:  # noqa: ANN001
    model, hf, _ = pair
    context = TextContext(start=(), max_length=model.config.block_size)
    for p in prompts():
        [[ours]] = generate(model, TOK, [p], GenerationParams(max_new_tokens=64, stop_at_eos=False), context=context)
        theirs = hf.generate(torch.tensor([p]), max_new_tokens=64, min_new_tokens=64, do_sample=False,
                             pad_token_id=TOK.pad_id)
        assert ours.token_ids == theirs[0, len(p):].tolist()


@pytest.mark.parametrize("options", [
    dict(num_beams=4, num_return_sequences=1, length_penalty=1.0, early_stopping=True),
    dict(num_beams=4, num_return_sequences=2, length_penalty=0.0, early_stopping=True),
    dict(num_beams=3, num_return_sequences=3, length_penalty=2.0, early_stopping=True),
    dict(num_beams=4, num_return_sequences=2, length_penalty=1.0, early_stopping=True, no_repeat_ngram_size=2),
])
def test_beam_search_matches_sequences_order_and_scores(pair, options: dict) -> None:  # noqa: ANN001
    """With ``<eos>`` reachable, beams finish at different lengths, so the length penalty and the
    stopping rule decide the order."""
    model, hf, _ = pair
    context = TextContext(start=(), max_length=model.config.block_size)
    for p in prompts()[:2]:
        [ours] = generate(model, TOK, [p], GenerationParams(strategy="beam", max_new_tokens=12, **options),
                          context=context)
        # A documented convention (lm.decoding.params.Completion): lmforge's log-probabilities are
        # renormalised after the n-gram ban, which is transformers' renormalize_logits=True.
        theirs = hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=TOK.eos_id,
                             pad_token_id=TOK.pad_id, output_scores=True, return_dict_in_generate=True,
                             renormalize_logits=True, **options)
        def finished(row: list[int]) -> list[int]:  # what follows a finished beam's <eos> is fill
            row = [t for t in row if t != TOK.pad_id]
            return row[: row.index(TOK.eos_id) + 1] if TOK.eos_id in row else row

        want = [finished(row[len(p):].tolist()) for row in theirs.sequences]
        assert [c.token_ids for c in ours] == want
        for c, score in zip(ours, theirs.sequences_scores.tolist(), strict=True):
            assert c.cumulative_logprob / len(c.token_ids) ** options["length_penalty"] == pytest.approx(score, abs=1e-4)


def test_perplexity_equals_transformers_loss_on_the_same_windows(pair) -> None:  # noqa: ANN001
    """Each of lmforge's scoring windows, run through transformers with its loss: the same total.
    And the sliding-window figure of transformers' documentation (its strided-perplexity recipe),
    with two stated differences of convention: an lmforge window is ``max_context`` inputs, each
    predicting the next token, where the recipe's ``max_length`` also counts the last predicted
    token (so lmforge's windows are the recipe's at ``max_length = size + 1``); and lmforge's last
    window keeps a full window of context where the recipe's is cut short -- so on a text whose
    windows end together the two figures are equal."""
    from lm.score import windows

    model, hf, _ = pair
    size, stride = 64, 24
    context = TextContext(start=(), max_length=size)
    text = "the quick brown fox jumps over the lazy dog, and then it runs away.\n" * 6
    ids = TOK.encode(text)
    [ours] = score_ids(model, [ids], context=context, stride=stride)

    def hf_nll(begin: int, end: int, first: int) -> tuple[float, int]:
        """transformers' loss for targets ids[first + 1 .. end] read from inputs ids[begin .. end)."""
        x = torch.tensor([ids[begin : end + 1]])
        labels = x.clone()
        labels[:, : first - begin + 1] = -100
        with torch.no_grad():
            loss = hf(x, labels=labels).loss
        count = int((labels[:, 1:] != -100).sum())
        return float(loss) * count, count

    parts = [hf_nll(*w) for w in windows(len(ids) - 1, size, stride)]
    assert sum(n for _, n in parts) == len(ours) == len(ids) - 1
    assert float(ours.sum()) == pytest.approx(sum(nll for nll, _ in parts), rel=1e-5)

    aligned = ids[: size + 1 + stride * ((len(ids) - 1 - size) // stride)]  # the last window ends the text
    [ours] = score_ids(model, [aligned], context=context, stride=stride)
    x = torch.tensor([aligned])
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, x.shape[1], stride):  # the documentation's loop
        end = min(begin + size + 1, x.shape[1])
        target = x[:, begin:end].clone()
        target[:, : -(end - prev_end)] = -100
        with torch.no_grad():
            loss = hf(x[:, begin:end], labels=target).loss
        # the labels the loss averages over (shifted by one inside the model); the recipe's
        # "minus one per window" holds for the first window only
        valid = int((target[:, 1:] != -100).sum())
        nll_sum, n_tokens, prev_end = nll_sum + float(loss) * valid, n_tokens + valid, end
        if end == x.shape[1]:
            break
    assert len(ours) == n_tokens
    assert math.exp(float(ours.mean())) == pytest.approx(math.exp(nll_sum / n_tokens), rel=1e-5)


def test_export_cli_writes_what_transformers_loads_and_refuses_rnns(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    model = lmforge_model("rope", False, True)
    save_checkpoint(tmp_path / "ckpt", model, TOK)
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert "GPTNeoXForCausalLM" in capsys.readouterr().out
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.tensor([TOK.encode("hello there")])
    with torch.no_grad():
        torch.testing.assert_close(model(x, None, use_cache=False)[0], hf(x).logits, atol=1e-5, rtol=1e-5)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "gpt_neox"
    rnn = build_model(RNNConfig(vocab_size=TOK.vocab_size, n_embd=8, n_hidden=8, n_layer=1))
    save_checkpoint(tmp_path / "rnn", rnn, TOK)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "rnn"), str(tmp_path / "x"), "--format", "hf"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exports Transformers" in err


@pytest.mark.parametrize("options", [
    dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8), dict(min_p=0.1), dict(repetition_penalty=1.5),
    dict(temperature=1.3, top_k=10, top_p=0.9, min_p=0.05, repetition_penalty=1.2), dict(top_k=1),
])
def test_each_sampling_transform_draws_from_transformers_distribution(options: dict) -> None:
    """lmforge's sampler, driven with a fine grid of uniforms (its inverse-CDF draw then hits
    each token in proportion to its probability), against transformers' logits processors on
    the same logits: the same distribution, token by token."""
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from lm.decoding.sampling import RowSampler

    torch.manual_seed(7)
    V, N = 40, 20000
    logits = torch.randn(1, V) * 2.5
    history = torch.tensor([[3, 5, 5, 9, 17]])
    processors = LogitsProcessorList()
    if "repetition_penalty" in options:
        processors.append(RepetitionPenaltyLogitsProcessor(options["repetition_penalty"]))
    for name, warper in (("temperature", TemperatureLogitsWarper), ("top_k", TopKLogitsWarper),
                         ("top_p", TopPLogitsWarper), ("min_p", MinPLogitsWarper)):
        if name in options:
            processors.append(warper(options[name]))
    want = processors(history, logits.clone()).softmax(-1)[0]

    params = GenerationParams(strategy="sample", **options)
    sampler = RowSampler([params] * N, torch.device("cpu"))
    seen = torch.zeros(N, V, dtype=torch.bool)
    seen[:, history[0]] = True
    constrained = sampler.constrain(logits.expand(N, V).clone(), seen, [history[0].tolist()] * N)
    uniforms = (torch.arange(N, dtype=torch.float64) + 0.5) / N
    drawn = torch.bincount(sampler.choose(constrained, uniforms), minlength=V).double() / N
    assert (drawn - want.double()).abs().max() <= 2.0 / N
    if options == {"top_k": 1}:
        assert int(drawn.argmax()) == int(logits.argmax()) and drawn.max() == 1.0


@pytest.mark.parametrize("unk_policy", ["byte_fallback", "unk"])
def test_an_exported_char_tokenizer_gives_the_same_ids_through_autotokenizer(unk_policy: str, tmp_path: Path) -> None:
    tok = CharTokenizer(list("abcdefghij .,\n<>"), unk_policy=unk_policy)
    model = build_model(TransformerConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    export_hf(model, tmp_path, tok)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in ["abc def", "a\nb, <eos> j", "héllo wörld €\n", "<0x41>", "  \n\n", "", "\U0001f600 emoji"]:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids, text
        if unk_policy == "byte_fallback":  # lossless: the text comes back (an <unk> reads differently)
            assert hf.decode(ids) == tok.decode(ids) == text
    assert (hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (tok.eos_id, tok.pad_id, tok.unk_id)


def test_the_shipped_char_model_continues_the_same_in_transformers(tmp_path: Path) -> None:
    """``lmforge export checkpoints/shakespeare-char --format hf``: transformers' greedy
    continuation of a prompt, through its own tokenizer, is ``lmforge generate``'s."""
    from lm.pipeline import Pipeline

    shipped = Path(__file__).resolve().parents[1] / "checkpoints" / "shakespeare-char"
    assert main(["export", str(shipped), str(tmp_path / "hf"), "--format", "hf"]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    pipe = Pipeline.from_checkpoint(shipped, device="cpu")
    prompt = "ROMEO:\nBut soft, what light"
    [[ours]] = pipe.generate([prompt], GenerationParams(max_new_tokens=80, stop_at_eos=False))
    start = list(pipe.context.start)  # the text start lmforge reads before every prompt ("\n")
    ids = torch.tensor([start + hf_tok.encode(prompt, add_special_tokens=False)])
    out = hf.generate(ids, max_new_tokens=80, min_new_tokens=80, do_sample=False)
    assert hf_tok.decode(out[0, ids.shape[1]:]) == ours.text
    assert len(ours.text) > 40 and ours.text.strip()


@pytest.mark.parametrize("settings", [dict(), dict(lowercase=True), dict(eos_at_newline=False)],
                         ids=["default", "lowercase", "no-eos"])
def test_an_exported_word_tokenizer_gives_the_same_ids_and_text_through_autotokenizer(settings: dict,
                                                                                      tmp_path: Path) -> None:
    from tokenizer import WordTokenizer

    tok = WordTokenizer(["the", "cat", "sat", "on", "mat", ",", "N", "héllo", "<unk>x"][:8], **settings)
    model = build_model(TransformerConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    export_hf(model, tmp_path, tok)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    texts = ["the cat sat", "The Cat\nsat on  the\tmat ,\n\nN", "héllo wörld\x1cthe\u3000cat\u2028mat", "the<eos>cat",
             "<unk> <eos> <pad> on", "  \n", "", "mat\n"]
    for text in texts:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids, text
        assert hf.decode(ids) == tok.decode(ids), text
    for ids in ([2, 4, 3, 3, 5, 0, 1, 6, 3], [0, 0], [3, 4, 3]):
        assert hf.decode(ids) == tok.decode(ids), ids
    assert (hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (tok.eos_id, tok.pad_id, tok.unk_id)


def test_what_the_transformers_format_cannot_hold_is_refused_by_name(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from lm.hf_export import ExportError
    from tokenizer import WordTokenizer

    tok = WordTokenizer(["a", "b"], split_regex=r"\w+|[^\w\s]")
    model = build_model(TransformerConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    export_hf(model, tmp_path / "regex", tok)  # the model goes; the tokenizer cannot, and a warning says why
    assert not (tmp_path / "regex" / "tokenizer.json").exists() and "split_regex" in caplog.text
    grouped = TransformerConfig(vocab_size=40, block_size=16, n_layer=1, n_head=4, n_kv_head=2, n_embd=16)
    with pytest.raises(ExportError, match="model.norm = layernorm"):  # GQA is Llama's, and Llama has RMSNorm
        export_hf(build_model(grouped), tmp_path / "gqa")
    assert not (tmp_path / "gqa").exists()


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_an_exported_sentencepiece_tokenizer_gives_the_same_ids_and_text_through_autotokenizer(
        kind: str, tmp_path: Path) -> None:
    """Same ids, same text; for unigram, a piece's name typed in a text is the one documented
    difference (``tokenizer.hf``), so that text is left to bpe."""
    import random

    from tokenizer import SentencePieceTokenizer

    corpus = tmp_path / "corpus.txt"
    words = ["the", "king", "and", "queen", "of", "a", "land", "far", "away", "said", "that", "12", "men", "came", "345", "days", "ago"]
    rng = random.Random(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randrange(1, 14)))
                                for _ in range(400)), encoding="utf-8")
    tok = SentencePieceTokenizer.train(kind, [corpus], 300)
    model = build_model(TransformerConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    export_hf(model, tmp_path / "hf", tok)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = corpus.read_text(encoding="utf-8")
    texts = ["the king said", "  two  spaces\n\nand lines\n", "digits 2026 and ünïcödé €, 漢字 \U0001f600", "", " ",
             "thequeen", *(["<eos> in text <0x41><unk>"] if kind == "bpe" else []), *(text[a:a + rng.randrange(200)] for a in rng.sample(range(len(text)), 60))]
    for t in texts:
        ids = tok.encode(t)
        assert hf.encode(t, add_special_tokens=False) == ids, t
        assert hf.decode(ids) == tok.decode(ids) == t, t
