"""Model invariants on tiny CPU models: causality, cached == uncached, padding, tying, init."""

from __future__ import annotations

import pytest
import torch

from lm.config import ConfigError, RNNConfig, TransformerConfig
from lm.models import KVCache, RNNState, build_model, concat_states

V = 37


def configs() -> list:
    return [
        TransformerConfig(vocab_size=V, block_size=24, n_layer=2, n_head=2, n_embd=16),
        TransformerConfig(vocab_size=V, block_size=24, n_layer=2, n_head=2, n_embd=16, pos_emb="learned", bias=True),
        RNNConfig(vocab_size=V, cell="lstm", n_embd=12, n_hidden=20, n_layer=2),
        RNNConfig(vocab_size=V, cell="gru", n_embd=12, n_hidden=12, n_layer=1),
        RNNConfig(vocab_size=V, cell="rnn_tanh", n_embd=12, n_hidden=12, tie_weights=False),
        RNNConfig(vocab_size=V, cell="rnn_relu", n_embd=12, n_hidden=16, n_layer=3),
    ]


@pytest.fixture(params=configs(), ids=lambda c: f"{c.family}-{getattr(c, 'cell', c.__dict__.get('pos_emb'))}")
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(request.param).eval()


def test_shapes_and_state_type(model: torch.nn.Module) -> None:
    x = torch.randint(0, V, (3, 10))
    logits, state = model(x)
    assert logits.shape == (3, 10, V)
    assert isinstance(state, KVCache | RNNState)
    assert state.select(torch.tensor([2, 0])).batch_size == 2


def test_causal(model: torch.nn.Module) -> None:
    """Changing a later token never changes earlier logits."""
    x = torch.randint(0, V, (2, 12))
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % V
    a, _ = model(x, use_cache=False)
    b, _ = model(y, use_cache=False)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def stepwise(model: torch.nn.Module, tokens: torch.Tensor, state):  # noqa: ANN001, ANN201
    """``(logits [B, T, V], state)`` of ``tokens`` run one position at a time after ``state``,
    as decoding runs them."""
    parts = []
    for t in range(tokens.shape[1]):
        step, state = model(tokens[:, t : t + 1], state)
        parts.append(step)
    return torch.cat(parts, 1), state


def test_incremental_equals_full(model: torch.nn.Module) -> None:
    x = torch.randint(0, V, (2, 20))
    full, _ = model(x, use_cache=False)
    logits, state = model(x[:, :9])
    rest, _ = stepwise(model, x[:, 9:], state)
    torch.testing.assert_close(torch.cat([logits, rest], 1), full, atol=1e-5, rtol=1e-4)


def test_left_padded_batch_equals_each_alone(model: torch.nn.Module) -> None:
    a, b = torch.randint(0, V, (1, 14)), torch.randint(0, V, (1, 6))
    tokens = torch.cat([a, torch.cat([torch.zeros(1, 8, dtype=torch.long), b], 1)])
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[1, :8] = False
    logits, state = model(tokens, pad_mask=mask)
    la, sa = model(a)
    lb, sb = model(b)
    torch.testing.assert_close(logits[0], la[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[1, 8:], lb[0], atol=1e-5, rtol=1e-4)
    nxt = torch.randint(0, V, (2, 1))
    step, _ = model(nxt, state)
    joined, _ = model(nxt, concat_states([sa, sb]))
    torch.testing.assert_close(step, joined, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(step[1], model(nxt[1:], sb)[0][0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_rnn_decode_step_equals_the_sequence_module(cell: str, dtype: torch.dtype, monkeypatch) -> None:
    """Decoding one token at a time without gradients runs ATen's cell functions, not
    ``nn.LSTM`` and kin (their CPU path costs a oneDNN primitive per call); it must compute what
    the sequence module computes over the whole sequence."""
    torch.manual_seed(0)
    model = build_model(RNNConfig(vocab_size=V, cell=cell, n_embd=12, n_hidden=20, n_layer=3)).to(dtype).eval()
    x = torch.randint(0, V, (3, 15))
    with torch.inference_mode():
        full, full_state = model(x)
        logits, state = model(x[:, :4])
        sequence_forward = type(model.rnn).forward
        calls = []
        monkeypatch.setattr(type(model.rnn), "forward", lambda *a, **k: calls.append(1) or sequence_forward(*a, **k))
        rest, state = stepwise(model, x[:, 4:], state)
    assert not calls, "a one-token decode step went through the sequence module"
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.05, rtol=0.05)
    torch.testing.assert_close(torch.cat([logits, rest], 1).float(), full.float(), **tol)
    for got, want in zip(state.as_tuple() if cell == "lstm" else (state.h,),
                         full_state.as_tuple() if cell == "lstm" else (full_state.h,), strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got.float(), want.float(), **tol)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_recurrence_stays_fp32_under_cpu_autocast(cell: str) -> None:
    """bf16 autocast speeds up the output projection; the recurrent state is carried in fp32."""
    torch.manual_seed(0)
    model = build_model(RNNConfig(vocab_size=V, cell=cell, n_embd=16, n_hidden=16, n_layer=2)).eval()
    x = torch.randint(0, V, (2, 30))
    with torch.inference_mode():
        ref, ref_state = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, state = model(x)
    assert low.dtype == torch.bfloat16
    assert state.h.dtype == torch.float32
    torch.testing.assert_close(state.h, ref_state.h, atol=1e-6, rtol=1e-6)  # recurrence identical to fp32
    torch.testing.assert_close(low.float(), ref, atol=0.05, rtol=0.05)


def test_weights_remain_tied_after_init() -> None:
    t = build_model(TransformerConfig(vocab_size=V, block_size=8, n_layer=1, n_head=1, n_embd=8))
    assert t.lm_head.weight is t.wte.weight
    r = build_model(RNNConfig(vocab_size=V, n_embd=8, n_hidden=12))
    assert r.decoder.weight is r.embedding.weight and r.proj is not None


def test_residual_init_is_scaled_by_depth() -> None:
    torch.manual_seed(0)
    m = build_model(TransformerConfig(vocab_size=V, block_size=8, n_layer=8, n_head=2, n_embd=64))
    proj = m.blocks[0].attn.c_proj.weight.std().item()
    fc = m.blocks[0].mlp.c_fc.weight.std().item()
    assert proj == pytest.approx(0.02 / 4, rel=0.15)
    assert fc == pytest.approx(0.02, rel=0.15)


def test_learned_positions_refuse_past_block() -> None:
    m = build_model(TransformerConfig(vocab_size=V, block_size=8, n_layer=1, n_head=1, n_embd=8, pos_emb="learned"))
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_embd": 10, "n_head": 3}, "divisible"),
        ({"pos_emb": "alibi"}, "pos_emb"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_transformer_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TransformerConfig(vocab_size=V, **kwargs)


def test_rnn_config_errors() -> None:
    with pytest.raises(ConfigError, match="cell must be one of"):
        RNNConfig(vocab_size=V, cell="transformer")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepare_for_inference_changes_layout_not_values(dtype: torch.dtype) -> None:
    from lm.inference import prepare_for_inference

    torch.manual_seed(0)
    model = build_model(TransformerConfig(vocab_size=V, block_size=24, n_layer=2, n_head=2, n_embd=16)).to(dtype)
    x = torch.randint(0, V, (3, 10))
    with torch.inference_mode():
        ref, _ = model.eval()(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model = prepare_for_inference(model)
    assert all(torch.equal(v, before[k]) and v.shape == before[k].shape for k, v in model.state_dict().items())
    assert model.lm_head.weight is model.wte.weight  # still tied
    # fp32 weights become column-major on CPU; bf16 ones keep PyTorch's row-major layout
    assert model.lm_head.weight.is_contiguous() == (dtype == torch.bfloat16)
    with torch.inference_mode():
        out, _ = model(x)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)


def test_transformer_dropout_only_in_training() -> None:
    """Dropout acts in train mode (embedding, attention output, MLP output) and not at eval."""
    torch.manual_seed(0)
    model = build_model(TransformerConfig(vocab_size=V, block_size=24, n_layer=2, n_head=2, n_embd=16, dropout=0.5))
    x = torch.randint(0, V, (2, 10))
    model.train()
    a, _ = model(x, use_cache=False)
    b, _ = model(x, use_cache=False)
    assert not torch.allclose(a, b)
    model.eval()
    with torch.inference_mode():
        c, _ = model(x, use_cache=False)
        d, _ = model(x, use_cache=False)
    assert torch.equal(c, d)
    from lm.models.transformer import apply_dropout

    ones = torch.ones(1000)
    assert (apply_dropout(torch.nn.Dropout(0.5).train(), ones) == 0).any()
    assert apply_dropout(torch.nn.Dropout(0.5).eval(), ones) is ones
    assert apply_dropout(torch.nn.Dropout(0.0).train(), ones) is ones
