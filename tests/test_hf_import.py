"""``lmforge import``: a transformers checkpoint (built here from a small config -- nothing is
downloaded) becomes an lmforge checkpoint that generates, scores and serves, and agrees with
transformers on the same weights: logits, greedy decoding, tokenization."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_service_helpers import client_for, test_settings  # noqa: E402

from lm.cli import main  # noqa: E402
from lm.decoding.params import GenerationParams  # noqa: E402
from lm.hf_export import export_hf  # noqa: E402
from lm.pipeline import Pipeline  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog. a journey of a thousand miles begins with one step.\n" * 30


def byte_level_tokenizer(directory: Path) -> int:
    """GPT-2's kind of tokenizer (byte-level BPE with <|endoftext|>), trained on a small text."""
    from tokenizers import ByteLevelBPETokenizer

    corpus = directory / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    tok = ByteLevelBPETokenizer()
    tok.train([str(corpus)], vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2TokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "chat_template": "{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}",
    }))
    corpus.unlink()
    return tok.get_vocab_size()


@pytest.fixture(scope="module", params=["gpt2-tied", "gpt2-untied"])
def gpt2(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    hf_dir = tmp_path_factory.mktemp("gpt2")
    vocab = byte_level_tokenizer(hf_dir)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  tie_word_embeddings=request.param.endswith("-tied"),
                                  eos_token_id=0, bos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(hf_dir)
    out = hf_dir.parent / f"{hf_dir.name}-lmforge"
    assert main(["import", str(hf_dir), str(out)]) == 0
    return model, hf_dir, out


def test_an_imported_gpt2_agrees_with_transformers(gpt2) -> None:  # noqa: ANN001
    hf, hf_dir, out = gpt2
    pipe = Pipeline.from_checkpoint(out, device="cpu")
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours_tok = load_tokenizer(out)
    for text in ["the quick brown fox", " jumps over\nthe lazy dog ünïcödé €", "<|endoftext|>a"]:
        assert ours_tok.encode(text) == hf_tok.encode(text)
        assert ours_tok.decode(ours_tok.encode(text)) == text
    ids = ours_tok.encode("a journey of a thousand")
    start = list(pipe.context.start)
    assert start == [hf_tok.eos_token_id]  # texts start after <|endoftext|>, as GPT-2 was trained
    x = torch.tensor([start + ids])
    with torch.no_grad():
        torch.testing.assert_close(pipe.model(x, None, use_cache=False)[0], hf(x).logits, atol=1e-4, rtol=1e-4)
    [[ours]] = pipe.generate(["a journey of a thousand"], GenerationParams(max_new_tokens=40, stop_at_eos=False))
    theirs = hf.generate(x, max_new_tokens=40, min_new_tokens=40, do_sample=False, pad_token_id=0)
    assert ours.token_ids == theirs[0, x.shape[1]:].tolist()
    assert pipe.chat_template.stop == ("<|endoftext|>",)


def test_an_imported_model_serves(gpt2, tmp_path: Path) -> None:  # noqa: ANN001
    _, _, out = gpt2
    with client_for(test_settings(out.parent, models=[out.name])) as client:
        r = client.post("/v1/completions", json={"prompt": "the quick", "max_tokens": 5, "temperature": 0,
                                                 "logprobs": 2})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert "".join(choice["logprobs"]["tokens"]) == choice["text"]
        info = client.get("/tokenizer_info").json()
        assert info["tokenizer_kind"] == "hf" and info["eos_token"] == "<|endoftext|>"
        assert client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                         "max_tokens": 3}).status_code == 200


def test_an_imported_pythia_shaped_model_agrees_with_transformers(tmp_path: Path) -> None:
    """GPT-NeoX as Pythia configures it: parallel attention and MLP, rotary on a quarter of each
    head, exact GELU, untied head, biases."""
    vocab = byte_level_tokenizer(tmp_path)
    torch.manual_seed(2)
    cfg = transformers.GPTNeoXConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=256, max_position_embeddings=64, use_parallel_residual=True,
                                     hidden_act="gelu", tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
                                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "partial_rotary_factor": 0.25})
    hf = transformers.GPTNeoXForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    assert main(["import", str(tmp_path), str(tmp_path / "out")]) == 0
    pipe = Pipeline.from_checkpoint(tmp_path / "out", device="cpu")
    assert (pipe.config.parallel_residual, pipe.config.rotary_fraction, pipe.config.activation) == (True, 0.25, "gelu")
    x = torch.tensor([list(pipe.context.start) + load_tokenizer(tmp_path / "out").encode("the lazy dog")])
    with torch.no_grad():
        torch.testing.assert_close(pipe.model(x, None, use_cache=False)[0], hf(x).logits, atol=1e-4, rtol=1e-4)
    [[ours]] = pipe.generate(["the lazy dog"], GenerationParams(max_new_tokens=30, stop_at_eos=False))
    theirs = hf.generate(x, max_new_tokens=30, min_new_tokens=30, do_sample=False, pad_token_id=0)
    assert ours.token_ids == theirs[0, x.shape[1]:].tolist()


def sentencepiece_style_tokenizer(directory: Path) -> int:
    """Llama's kind of tokenizer: a BPE over ``▁``-marked words with byte fallback, whose
    post-processor puts ``<s>`` before every text."""
    from tokenizers import SentencePieceBPETokenizer, processors

    tok = SentencePieceBPETokenizer()
    tok.train_from_iterator([TEXT], vocab_size=300, min_frequency=1, special_tokens=["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
    }))
    return tok.get_vocab_size()


@pytest.mark.parametrize(("kv_heads", "tied"), [(2, False), (4, True)], ids=["gqa-untied", "mha-tied"])
def test_an_imported_llama_agrees_with_transformers(kv_heads: int, tied: bool, tmp_path: Path) -> None:
    """Llama as SmolLM and TinyLlama configure it: RMSNorm, SwiGLU with an intermediate size that
    is no multiple of the width, grouped-query attention, a rope_theta of its own; texts start
    with the ``<s>`` its tokenizer adds."""
    vocab = sentencepiece_style_tokenizer(tmp_path)
    torch.manual_seed(3)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
                                   rms_norm_eps=1e-5, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2,
                                   rope_parameters={"rope_type": "default", "rope_theta": 100000.0})
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # away from the 0.02 init, so greedy decoding does not settle on one token
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    hf.save_pretrained(tmp_path)
    assert main(["import", str(tmp_path), str(tmp_path / "out")]) == 0
    pipe = Pipeline.from_checkpoint(tmp_path / "out", device="cpu")
    c = pipe.config
    assert (c.norm, c.gated_mlp, c.kv_heads, c.mlp_width, c.rope_base, c.tie_weights) == \
        ("rmsnorm", True, kv_heads, 172, 100000.0, tied)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours_tok = load_tokenizer(tmp_path / "out")
    for text in ["the quick brown fox", "a journey of miles ünï €"]:
        assert [*pipe.context.start, *ours_tok.encode(text)] == hf_tok.encode(text)  # <s> first, as transformers
        assert ours_tok.decode(ours_tok.encode(text)) == hf_tok.decode(hf_tok.encode(text, add_special_tokens=False))
    x = torch.tensor([hf_tok.encode("a journey of a thousand")])
    with torch.no_grad():
        torch.testing.assert_close(pipe.model(x, None, use_cache=False)[0], hf(x).logits, atol=1e-4, rtol=1e-4)
    [[ours]] = pipe.generate(["a journey of a thousand"], GenerationParams(max_new_tokens=40, stop_at_eos=False))
    hf.generation_config.eos_token_id = None  # no stop and no ban on </s>: lmforge's stop_at_eos=False
    theirs = hf.generate(x, max_new_tokens=40, do_sample=False, pad_token_id=0)
    hf.generation_config.eos_token_id = 2
    assert ours.token_ids == theirs[0, x.shape[1]:].tolist()
    assert len(set(ours.token_ids)) > 3
    [[beam]] = pipe.generate(["a journey"], GenerationParams(strategy="beam", num_beams=4, max_new_tokens=12))
    want = hf.generate(torch.tensor([hf_tok.encode("a journey")]), num_beams=4, max_new_tokens=12, do_sample=False,
                       eos_token_id=2, pad_token_id=0, early_stopping=True)
    assert beam.token_ids == [t for t in want[0, 3:].tolist() if t != 0]


def test_a_roundtrip_through_the_transformers_format_keeps_every_weight(tmp_path: Path) -> None:
    from lm.config import TransformerConfig
    from lm.hf_import import lmforge_config, lmforge_state, load_hf_weights, read_hf_config
    from lm.models import build_model

    llama = {"norm": "rmsnorm", "gated_mlp": True, "activation": "silu", "mlp_hidden": 40, "norm_eps": 1e-6}
    for pos, bias, tie, knobs in (("rope", False, True, {}), ("rope", True, False, {}), ("learned", True, True, {}),
                                  ("learned", True, True, {"norm_eps": 1e-6, "mlp_hidden": 72}),
                                  ("rope", False, False, {**llama, "n_kv_head": 1}), ("rope", True, True, llama)):
        torch.manual_seed(1)
        cfg = TransformerConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32, pos_emb=pos,
                                bias=bias, tie_weights=tie, **knobs)
        model = build_model(cfg)
        where = tmp_path / f"{pos}-{bias}-{tie}-{len(knobs)}"
        export_hf(model, where)
        back = lmforge_config(read_hf_config(where))
        state = lmforge_state(load_hf_weights(where), back)
        if not bias and pos == "rope":  # exported with zero biases where NeoX has them: those are extra
            assert back.bias is False
        assert back == cfg
        for name, value in model.state_dict().items():
            assert torch.equal(state[name], value), name


LLAMA = {"model_type": "llama", "hidden_act": "silu"}


@pytest.mark.parametrize(("change", "named"), [
    ({"model_type": "bloom", "architectures": ["BloomForCausalLM"]}, "model_type 'bloom'"),
    ({"hidden_act": "relu"}, "hidden_act 'relu'"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}}, "rope_type 'linear'"),
    ({**LLAMA, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope scaling"),
    ({**LLAMA, "model_type": "mistral", "sliding_window": 4096}, "sliding_window 4096"),
    ({**LLAMA, "head_dim": 8}, "head_dim 8"),
    ({**LLAMA, "attention_bias": True}, "attention_bias and mlp_bias differ"),
    ({"model_type": "llama", "hidden_act": "gelu"}, "hidden_act 'gelu'"),
])
def test_what_lmforge_cannot_compute_is_refused_by_name(change: dict, named: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from lm.config import TransformerConfig
    from lm.models import build_model

    export_hf(build_model(TransformerConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=8)), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    assert main(["import", str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err
    assert not (tmp_path / "out").exists()
