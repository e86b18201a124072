"""``lm.inference``: prepacked oneDNN linears give the same numbers as ``nn.Linear``, stay tied,
follow in-place weight changes and casts, and never get in the way of training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lm.inference as inference
from lm.config import TransformerConfig
from lm.generate import GenerationParams, generate
from lm.inference import PackedLinear, packing_supported, prepare_for_inference
from lm.models import build_model
from tokenizer import CharTokenizer

pytestmark = pytest.mark.skipif(not packing_supported(torch.ones(1)), reason="PyTorch built without oneDNN")

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def dtypes() -> list[torch.dtype]:
    return [torch.float32] + ([torch.bfloat16] if packing_supported(torch.ones(1, dtype=torch.bfloat16)) else [])


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Input shapes of every call that took the packed path."""
    calls: list[tuple[int, ...]] = []
    real = inference.packed_linear

    def record(x, packed, bias):  # noqa: ANN001, ANN202
        calls.append(tuple(x.shape))
        return real(x, packed, bias)

    monkeypatch.setattr(inference, "packed_linear", record)
    return calls


@pytest.mark.parametrize("dtype", dtypes())
@pytest.mark.parametrize("shape", [(1, 48), (3, 48), (70, 48), (2, 5, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_equals_linear(dtype: torch.dtype, shape: tuple[int, ...], bias: bool, spy: list) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(48, 37, bias=bias).to(dtype)
    x = torch.randn(*shape, dtype=dtype)
    with torch.inference_mode():
        ref = linear(x)
        out = PackedLinear(linear)(x)
    assert out.shape == ref.shape and out.dtype == dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])
    single_fp32_row = dtype == torch.float32 and shape == (1, 48)
    assert spy == ([] if single_fp32_row else [shape])  # one fp32 row of a small matrix: MKL gemv


def test_single_row_rule(spy: list) -> None:
    """One fp32 row: MKL on one thread or for small matrices, oneDNN for big ones on more threads."""
    big = PackedLinear(nn.Linear(512, 1024))  # 2 MiB > GEMV_MAX_BYTES
    x = torch.randn(1, 512)
    threads = torch.get_num_threads()
    with torch.inference_mode():
        torch.set_num_threads(1)
        big(x)
        assert spy == []
        torch.set_num_threads(2)
        try:
            out = big(x)
        finally:
            torch.set_num_threads(threads)
    assert spy == [(1, 512)]
    torch.testing.assert_close(out, F.linear(x, big.weight, big.bias), **TOL[torch.float32])


def test_prepare_swaps_linears_keeps_ties_and_state() -> None:
    torch.manual_seed(0)
    model = build_model(TransformerConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepare_for_inference(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m, PackedLinear) for m in linears)
    assert model.lm_head.weight is model.wte.weight
    state = model.state_dict()
    assert state.keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in state.items())
    assert not model.training


def test_in_place_weight_change_repacks(spy: list) -> None:
    torch.manual_seed(0)
    layer = PackedLinear(nn.Linear(16, 8))
    x = torch.randn(4, 16)
    with torch.no_grad():
        layer.weight.mul_(3.0)
        layer.bias.add_(1.0)
        out = layer(x)
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), **TOL[torch.float32])
    assert spy == [(4, 16)]


def test_cast_after_packing_follows(spy: list) -> None:
    if torch.bfloat16 not in dtypes():
        pytest.skip("no native bf16 on this CPU")
    torch.manual_seed(0)
    layer = PackedLinear(nn.Linear(16, 8)).to(torch.bfloat16)
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    with torch.inference_mode():
        out = layer(x)
    assert out.dtype == torch.bfloat16 and spy == [(4, 16)]
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), **TOL[torch.bfloat16])


def test_training_takes_the_autograd_path(spy: list) -> None:
    """With gradients wanted the ordinary ``F.linear`` runs, so a prepared model still trains."""
    torch.manual_seed(0)
    layer = PackedLinear(nn.Linear(16, 8))
    x = torch.randn(4, 16)
    layer(x).square().sum().backward()
    assert spy == [] and layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert layer(x).dtype == torch.bfloat16  # autocast casts as for nn.Linear
    assert spy == []


@pytest.mark.parametrize("dtype", dtypes())
def test_prepared_model_decodes_like_the_plain_one(dtype: torch.dtype) -> None:
    """Greedy decoding and scoring logits agree between a plain and a prepared model, batched
    (the packed path) and single-row."""
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=300, block_size=64, n_layer=2, n_head=2, n_embd=32)
    plain = build_model(cfg).to(dtype).eval()
    prepared = prepare_for_inference(build_model(cfg).to(dtype))
    prepared.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 300, (3, 20))
    with torch.inference_mode():
        torch.testing.assert_close(prepared(tokens)[0], plain(tokens)[0], **TOL[dtype])
    if dtype != torch.float32:
        return  # bf16 rounding can flip a near-tie in greedy decoding; fp32 must agree exactly
    tok = CharTokenizer([chr(0x4E00 + i) for i in range(300 - 260)])
    prompts = [[5, 9, 11], [7], [280, 3, 100, 101]]
    params = GenerationParams(strategy="greedy", max_new_tokens=12, stop_at_eos=False)
    ours = generate(prepared, tok, prompts, params)
    ref = generate(plain, tok, prompts, params)
    assert [c[0].token_ids for c in ours] == [c[0].token_ids for c in ref]
