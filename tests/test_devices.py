"""The same invariants on every device this machine has (cpu; cuda and mps where present):
models, decoding, scoring, int8, training and the server each run there and agree with the CPU.

``LMFORGE_TEST_DEVICES`` (comma-separated) names the devices to test instead of every one
present; naming one that is absent fails, so ``bench/gpu_check.sh`` (which sets it to ``cuda``)
cannot pass on a machine without a GPU. The CPU is the reference: it is what every other test
in the suite checks against transformers and the invariants.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from test_models import stepwise
from test_service_helpers import make_checkpoints

from lm.config import ConfigError, RNNConfig, TransformerConfig
from lm.context import TextContext
from lm.decoding.generate import generate
from lm.decoding.params import GenerationParams
from lm.devices import resolve_device
from lm.inference import prepare_for_inference
from lm.models import build_model
from lm.pipeline import Pipeline
from lm.score import score_ids
from service.app import create_app
from service.settings import Settings
from tokenizer import CharTokenizer

V = 60


def present(name: str) -> bool:
    """Whether this machine has device ``name`` (``lm.devices``' own check)."""
    try:
        resolve_device(name)
    except ConfigError:
        return False
    return True


def devices() -> list[str]:
    asked = os.environ.get("LMFORGE_TEST_DEVICES", "")
    return [d.strip() for d in asked.split(",") if d.strip()] if asked else [d for d in ("cpu", "cuda", "mps")
                                                                              if present(d)]


@pytest.fixture(params=devices())
def device(request: pytest.FixtureRequest) -> torch.device:
    if not present(request.param):
        pytest.fail(f"LMFORGE_TEST_DEVICES names {request.param!r}, which this machine does not have")
    return torch.device(request.param)


def weight_dtypes(device: torch.device) -> list[torch.dtype]:
    """Weight dtypes to test on ``device``: fp32, and bf16 where it computes natively."""
    if device.type == "cuda":
        return [torch.float32, torch.bfloat16] if torch.cuda.is_bf16_supported() else [torch.float32]
    return [torch.float32, torch.bfloat16]


CONFIGS = {
    "transformer": TransformerConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32),
    "gpt2-like": TransformerConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32, pos_emb="learned",
                                   bias=True),
    "llama-like": TransformerConfig(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                                    norm="rmsnorm", gated_mlp=True, activation="silu"),
    "lstm": RNNConfig(vocab_size=V, cell="lstm", n_embd=16, n_hidden=24, n_layer=2, dropout=0.0),
    "gru": RNNConfig(vocab_size=V, cell="gru", n_embd=16, n_hidden=16, n_layer=1, dropout=0.0),
}


def tokenizer() -> CharTokenizer:
    """A character tokenizer of at most ``V`` ids (specials, letters, a line break)."""
    tok = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,\n"), unk_policy="unk")
    assert tok.vocab_size <= V
    return tok


def model_on(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(CONFIGS[name]).to(device=device, dtype=dtype).eval()


@pytest.mark.parametrize("name", CONFIGS)
def test_incremental_and_padded_equal_full_on_device(name: str, device: torch.device) -> None:
    model = model_on(name, device)
    x = torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        full, _ = model(x, use_cache=False)
        logits, state = model(x[:, :5])
        rest, _ = stepwise(model, x[:, 5:], state)
        torch.testing.assert_close(torch.cat([logits, rest], 1), full, atol=2e-5, rtol=1e-4)
        short = x[1:2, 4:]
        padded = x.clone()
        padded[1, :4] = 0
        mask = torch.ones_like(x, dtype=torch.bool)
        mask[1, :4] = False
        out, _ = model(padded, pad_mask=mask)
        alone, _ = model(short)
        torch.testing.assert_close(out[1:2, 4:], alone, atol=2e-5, rtol=1e-4)
    reference = model_on(name, torch.device("cpu"))
    with torch.inference_mode():
        torch.testing.assert_close(full.cpu(), reference(x.cpu(), use_cache=False)[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["gpt2-like", "llama-like", "lstm"])
def test_decoding_strategies_on_device(name: str, device: torch.device) -> None:
    """Greedy on ``device`` gives the CPU's tokens; batched equals alone; beam search and seeded
    sampling run and repeat; every dtype the device takes decodes."""
    tok = tokenizer()
    prompts = ["to be or not", "the quick brown fox jumps", "a"]
    greedy = GenerationParams(max_new_tokens=20, strategy="greedy", stop_at_eos=False)
    cpu = generate(prepare_for_inference(model_on(name, torch.device("cpu"))), tok, prompts, greedy)
    for dtype in weight_dtypes(device):
        model = prepare_for_inference(model_on(name, device, dtype))
        batched = generate(model, tok, prompts, greedy)
        alone = [generate(model, tok, [p], greedy)[0] for p in prompts]
        assert [c[0].token_ids for c in batched] == [c[0].token_ids for c in alone]
        if dtype == torch.float32:
            assert [c[0].token_ids for c in batched] == [c[0].token_ids for c in cpu]
        beam = GenerationParams(max_new_tokens=12, strategy="beam", num_beams=4, num_return_sequences=2,
                                stop_at_eos=False)
        [[first, second]] = generate(model, tok, prompts[:1], beam)
        assert first.cumulative_logprob >= second.cumulative_logprob and len(first.token_ids) == 12
        sample = GenerationParams(max_new_tokens=16, strategy="sample", temperature=0.9, top_k=20, top_p=0.9,
                                  seed=7, stop_at_eos=False)
        assert generate(model, tok, prompts, sample) == generate(model, tok, prompts, sample)


@pytest.mark.parametrize("name", ["transformer", "lstm"])
def test_scoring_on_device_matches_cpu(name: str, device: torch.device) -> None:
    data = [torch.randint(4, V, (150,), generator=torch.Generator().manual_seed(3)).tolist(), list(range(4, 40))]
    context = TextContext((3,), 32 if name == "transformer" else None)
    cpu = score_ids(model_on(name, torch.device("cpu")), data, context=context, stride=16)
    ours = score_ids(model_on(name, device), data, context=context, stride=16)
    for a, b in zip(ours, cpu, strict=True):
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=1e-4)


def test_int8_on_device(device: torch.device) -> None:
    """``--dtype int8`` loads and decodes on every device (where the int8 kernel is missing or
    wrong, the layers' self-check falls back to dequantized products)."""
    from lm.quantize import quantize_int8

    tok = tokenizer()
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=64)
    model = quantize_int8(build_model(cfg).to(device).eval())
    params = GenerationParams(max_new_tokens=10, strategy="greedy", stop_at_eos=False)
    [[completion]] = generate(model, tok, ["to be"], params)
    assert len(completion.token_ids) == 10


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "c.txt"
    path.write_text("ROMEO: But soft, what light through yonder window breaks?\n" * 60, encoding="utf-8")
    return path


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_training_on_device_lowers_the_loss(family: str, device: torch.device, corpus: Path, tmp_path: Path) -> None:
    from lm.config import run_config_from_dict
    from lm.training.trainer import train

    model = ({"family": "transformer", "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 32}
             if family == "transformer" else {"family": "rnn", "cell": "lstm", "n_embd": 16, "n_hidden": 32,
                                              "n_layer": 1, "dropout": 0.0})
    precision = "bf16" if torch.bfloat16 in weight_dtypes(device) else "fp32"
    run = run_config_from_dict({
        "data": {"train": [str(corpus)], "valid_fraction": 0.1},
        "tokenizer": {"kind": "char"},
        "model": model,
        "train": {"out_dir": str(tmp_path), "batch_size": 8, "seq_len": 16, "max_steps": 40, "eval_every": 40,
                  "lr": 1e-2, "warmup_steps": 2, "progress": False, "log_every": 1, "precision": precision,
                  "device": device.type, "samples": False},
    })
    result = train(run)
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    pipe = Pipeline.from_checkpoint(tmp_path, device=device)
    assert pipe.device.type == device.type
    [[completion]] = pipe.generate(["ROMEO:"], GenerationParams(max_new_tokens=8, strategy="greedy"))
    assert completion.token_ids


def test_server_on_device(device: torch.device, tmp_path: Path) -> None:
    """The server loads its checkpoints onto ``device`` and answers every kind of request there."""
    root = make_checkpoints(tmp_path)
    settings = Settings(checkpoints=root, device=device.type, torch_threads=torch.get_num_threads())
    with TestClient(create_app(settings)) as client:
        cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert {c["device"].split(":")[0] for c in cards.values()} == {device.type}
        for model in cards:
            body = {"model": model, "prompt": "To be", "max_tokens": 8}
            r = client.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] is not None
            r = client.post("/v1/generate", json={"model": model, "prompt": "To be", "strategy": "beam",
                                                  "num_beams": 3, "max_new_tokens": 6})
            assert r.status_code == 200, r.text
            r = client.post("/v1/perplexity", json={"model": model, "text": "To be, or not to be"})
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["perplexity"] > 1
            r = client.post("/v1/chat/completions", json={"model": model, "max_tokens": 6,
                                                          "messages": [{"role": "user", "content": "To be"}]})
            assert r.status_code == 200, r.text
            ids = client.post("/tokenize", json={"model": model, "prompt": "To be", "add_special_tokens": False}).json()["tokens"]
            assert client.post("/detokenize", json={"model": model, "tokens": ids}).json()["prompt"] == "To be"
            with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as stream:
                lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
            assert lines[-1] == "data: [DONE]" and json.loads(lines[0][6:])["choices"]
            with client.stream("POST", "/v1/generate/stream", json={"model": model, "prompt": "To be",
                                                                    "max_new_tokens": 5}) as stream:
                assert stream.status_code == 200 and any(line.startswith("data: ") for line in stream.iter_lines())
