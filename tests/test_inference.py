"""``lm.inference``: prepacked oneDNN linears give the same numbers as ``nn.Linear``, stay tied,
follow in-place weight changes and casts, and never get in the way of training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lm.inference as inference
from lm.config import TransformerConfig
from lm.decoding.generate import generate
from lm.decoding.params import GenerationParams
from lm.inference import (
    PackedLinear,
    packing_supported,
    packing_works,
    platform_packs,
    prepare_for_inference,
)
from lm.models import build_model
from tokenizer import CharTokenizer

pytestmark = pytest.mark.skipif(not platform_packs(), reason="not an x86-64 CPU with oneDNN")
"""Skipped only where packing was never meant to run: on x86-64 with oneDNN a PyTorch whose
private ops changed fails ``test_private_ops_work`` and every test that expects packing."""

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def dtypes() -> list[torch.dtype]:
    return [torch.float32] + ([torch.bfloat16] if packing_supported(torch.ones(1, dtype=torch.bfloat16)) else [])


def tiny_transformer() -> nn.Module:
    """A one-block Transformer (vocabulary 40, 16 wide), random weights."""
    return build_model(TransformerConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16))


@pytest.fixture
def pack_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pack every layer, however small (these tests' models are tiny)."""
    monkeypatch.setattr(inference, "PACK_MIN_BYTES", 0)


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


def test_private_ops_work() -> None:
    """On the CPUs the packing rules were measured on, PyTorch's private oneDNN ops exist and
    compute ``F.linear``. If this fails after a PyTorch upgrade, lmforge still decodes correctly
    (packing turns itself off) but slower: update the private-API block of ``lm/inference.py``."""
    assert packing_works(), "torch.ops.mkldnn's linear prepacking changed: see the warning logged"
    assert packing_supported(torch.ones(1))


def test_a_broken_private_op_turns_packing_off_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def changed(x, packed, bias):  # noqa: ANN001, ANN202 -- a release that changed the op
        raise RuntimeError("_linear_pointwise() got an unexpected argument")

    monkeypatch.setattr(inference, "packed_linear", changed)
    inference.packing_works.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="lm.inference"):
            assert not packing_works()
        assert "packing is off" in caplog.text and "unexpected argument" in caplog.text
        model = tiny_transformer()
        prepared = prepare_for_inference(model)
        assert not any(isinstance(m, PackedLinear) for m in prepared.modules())
        x = torch.randint(0, 40, (2, 6))
        with torch.inference_mode():
            assert torch.allclose(prepared(x)[0], model.eval()(x)[0], atol=1e-5)
    finally:
        monkeypatch.undo()
        inference.packing_works.cache_clear()


def test_prepare_leaves_the_given_model_alone(pack_all: None) -> None:
    model = tiny_transformer().train()
    before = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}
    prepared = prepare_for_inference(model)
    assert prepared is not model and model.training and not prepared.training
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert all(torch.equal(v, before[k][0]) and v.stride() == before[k][1] for k, v in model.state_dict().items())
    assert any(isinstance(m, PackedLinear) for m in prepared.modules())
    assert prepare_for_inference(model, in_place=True) is model
    assert any(isinstance(m, PackedLinear) for m in model.modules())


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
    """One fp32 row: MKL on one thread or for small or wide (output-layer) matrices, oneDNN for
    big ones on more threads."""
    big = PackedLinear(nn.Linear(512, 1024))  # 2 MiB > GEMV_MAX_BYTES
    wide = PackedLinear(nn.Linear(64, 64 * inference.WIDE * 2))  # 2 MiB, an output layer's shape
    x = torch.randn(1, 512)
    threads = torch.get_num_threads()
    with torch.inference_mode():
        torch.set_num_threads(1)
        big(x)
        assert spy == []
        torch.set_num_threads(2)
        try:
            out = big(x)
            wide(torch.randn(1, 64))
            wide(torch.randn(2, 64))
        finally:
            torch.set_num_threads(threads)
    assert spy == [(1, 512), (2, 64)]
    torch.testing.assert_close(out, F.linear(x, big.weight, big.bias), **TOL[torch.float32])


def test_route_to_mkl_follows_the_calibrated_row_counts(spy: list) -> None:
    """MKL measured faster at 1 and 8 rows: products of 1 and 5-8 rows go to MKL, of 2-4 and
    9 or more to oneDNN (a row count takes the choice of the next calibrated count up; past 64,
    always oneDNN); both give ``F.linear``'s numbers."""
    layer = PackedLinear(nn.Linear(16, 64))
    layer.route_to_mkl({1, 8})
    assert layer.calibrated
    with torch.inference_mode():
        for rows in (1, 2, 4, 5, 8, 9, 64, 65, 300):
            x = torch.randn(rows, 16)
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), **TOL[torch.float32])
    assert [shape[0] for shape in spy] == [2, 4, 9, 64, 65, 300]


def test_calibration_applies_what_it_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """``prepare_for_inference`` times both kernels per shape group and row count (here faked:
    MKL faster only at one row) and routes every fp32 packed layer accordingly; a later cast to
    bf16 drops the fp32 measurement."""
    calls = []

    def fake_best_of(fn, repeats: int = 2) -> float:  # noqa: ANN001 -- alternate MKL, oneDNN per row count
        fn()
        if repeats == 1:  # the cost estimate
            return 0.0
        rows = inference.CALIBRATION_ROWS[(len(calls) // 2) % len(inference.CALIBRATION_ROWS)]
        calls.append(rows)
        return 1.5 if len(calls) % 2 == 0 else (1.0 if rows == 1 else 2.0)

    monkeypatch.setattr(inference, "PACK_MIN_BYTES", 0)
    monkeypatch.setattr(inference, "_best_of", fake_best_of)
    torch.manual_seed(0)
    model = prepare_for_inference(tiny_transformer())
    packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
    shapes = {tuple(m.weight.shape) for m in packed}
    assert len(calls) == 2 * len(shapes) * len(inference.CALIBRATION_ROWS)
    assert packed and all(m.calibrated and m._mkl_rows[1] and not any(m._mkl_rows[2:]) for m in packed)
    if torch.bfloat16 in dtypes():
        model.to(torch.bfloat16)
        assert not any(m.calibrated for m in packed)


def test_calibration_over_budget_keeps_the_fixed_rules(pack_all: None) -> None:
    model = prepare_for_inference(tiny_transformer(), calibrate_kernels=False)
    assert not inference.calibrate(model, budget_s=0.0)
    assert not any(m.calibrated for m in model.modules() if isinstance(m, PackedLinear))
    assert inference.calibrate(model)
    assert all(m.calibrated for m in model.modules() if isinstance(m, PackedLinear))


def test_prepare_swaps_linears_keeps_ties_and_state() -> None:
    """Big fp32 matrices become ``PackedLinear``, small ones stay ``nn.Linear``; ties, values
    and ``state_dict`` are unchanged."""
    torch.manual_seed(0)
    model = build_model(TransformerConfig(vocab_size=1000, block_size=16, n_layer=2, n_head=2, n_embd=256))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model = prepare_for_inference(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    big = [m.weight.numel() * 4 >= inference.PACK_MIN_BYTES for m in linears]
    assert any(big) and not all(big)
    assert [isinstance(m, PackedLinear) for m in linears] == big
    assert isinstance(model.lm_head, PackedLinear) and model.lm_head.weight is model.wte.weight
    state = model.state_dict()
    assert state.keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in state.items())
    assert not model.training
    if torch.bfloat16 in dtypes():  # bf16: every layer, however small
        small = prepare_for_inference(tiny_transformer().to(torch.bfloat16))
        assert all(isinstance(m, PackedLinear) for m in small.modules() if isinstance(m, nn.Linear))


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
    """With gradients on the ordinary ``F.linear`` runs, so a prepared model still trains --
    also a trainable bias beside a frozen weight."""
    torch.manual_seed(0)
    layer = PackedLinear(nn.Linear(16, 8))
    x = torch.randn(4, 16)
    layer(x).square().sum().backward()
    assert spy == [] and layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    layer.weight.requires_grad_(False)
    layer.bias.grad = None
    layer(x).square().sum().backward()
    assert spy == [] and layer.bias.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert layer(x).dtype == torch.bfloat16  # autocast casts as for nn.Linear
    assert spy == []


def test_replaced_weight_repacks(spy: list) -> None:
    """A weight swapped for another tensor (``.data =``, a new Parameter, ``load_state_dict``
    with ``assign``) is repacked, not served from the old copy."""
    torch.manual_seed(0)
    layer = PackedLinear(nn.Linear(16, 8))
    x = torch.randn(4, 16)
    with torch.no_grad():
        layer.weight.data = torch.randn(8, 16)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), **TOL[torch.float32])
        layer.weight = nn.Parameter(torch.randn(8, 16))
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), **TOL[torch.float32])
        layer.load_state_dict({"weight": torch.randn(8, 16), "bias": torch.randn(8)}, assign=True)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), **TOL[torch.float32])
    assert len(spy) == 3


def test_deepcopy_and_pickle(tmp_path, pack_all: None) -> None:  # noqa: ANN001
    """oneDNN's reordered copy cannot be pickled; a prepared model still deep-copies and saves."""
    import copy

    torch.manual_seed(0)
    model = prepare_for_inference(tiny_transformer())
    tokens = torch.randint(0, 40, (2, 6))
    clone = copy.deepcopy(model)
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    with torch.inference_mode():
        ref = model(tokens)[0]
        torch.testing.assert_close(clone(tokens)[0], ref)
        torch.testing.assert_close(loaded(tokens)[0], ref)
    assert clone.lm_head.weight is clone.wte.weight


def test_tied_output_layer_follows_the_embedding(spy: list, pack_all: None) -> None:
    """An in-place change made through the embedding reaches the (tied) packed output layer."""
    torch.manual_seed(0)
    model = prepare_for_inference(tiny_transformer(), calibrate_kernels=False)  # 3 rows: oneDNN
    hidden = torch.randn(3, 16)
    with torch.no_grad():
        model.wte.weight.mul_(-2.0)
        torch.testing.assert_close(model.output_layer(hidden), F.linear(hidden, model.wte.weight),
                                   **TOL[torch.float32])
    assert spy == [(3, 16)]


@pytest.mark.parametrize("dtype", dtypes())
def test_prepared_model_decodes_like_the_plain_one(dtype: torch.dtype, spy: list, pack_all: None) -> None:
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
    assert spy, "the batched decode steps should take the packed path"
    ref = generate(plain, tok, prompts, params)
    assert [c[0].token_ids for c in ours] == [c[0].token_ids for c in ref]


def test_prepared_rnn_scores_like_the_plain_one(spy: list, pack_all: None) -> None:
    """An LSTM with a projection before its tied decoder: same logits and perplexity prepared."""
    from lm.config import RNNConfig
    from lm.context import TextContext
    from lm.score import score_ids

    torch.manual_seed(0)
    cfg = RNNConfig(vocab_size=120, cell="lstm", n_embd=16, n_hidden=24, n_layer=2, tie_weights=True)
    plain = build_model(cfg).eval()
    prepared = prepare_for_inference(build_model(cfg))
    prepared.load_state_dict(plain.state_dict())
    assert isinstance(prepared.proj, PackedLinear) and prepared.decoder.weight is prepared.embedding.weight
    tokens = torch.randint(0, 120, (3, 30))
    with torch.inference_mode():
        torch.testing.assert_close(prepared(tokens)[0], plain(tokens)[0], **TOL[torch.float32])
    ids = [torch.randint(4, 120, (200,)).tolist()]
    context = TextContext((3,), None)
    torch.testing.assert_close(score_ids(prepared, ids, context=context), score_ids(plain, ids, context=context),
                               **TOL[torch.float32])
    assert spy
