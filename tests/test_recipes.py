"""Training recipes (issue 16), each a config key: Muon, QK-norm, ReLU², logit soft-capping,
EMA and averaged SGD, and AWD-LSTM's regularisers (locked dropout, DropConnect on the recurrent
matrices, word-level embedding dropout).

Each is checked for what it promises, not only that it runs: a recipe's model decodes
incrementally as it scores in one pass, the regularisers touch training only (evaluation is the
plain model), the averaged weights are what is evaluated and saved, and every recipe resumes
exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train import losses, run_config

from lm.checkpoint import load_checkpoint
from lm.config import ConfigError, TrainConfig, run_config_from_dict
from lm.hf_export import ExportError, stock_family
from lm.losses import hidden_token_nll, token_nll
from lm.models.config import RNNConfig, TransformerConfig
from lm.models.rnn import RNNLM
from lm.models.transformer import TransformerLM
from lm.training.optim import MuonAdamW, build_optimizer
from lm.training.trainer import Trainer, train

TINY = {"vocab_size": 40, "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16}
TRANSFORMER_RECIPES = {
    "qk_norm": {"qk_norm": True},
    "qk_norm_gqa": {"qk_norm": True, "n_kv_head": 1},
    "relu2": {"activation": "relu2"},
    "softcap_untied": {"logit_softcap": 5.0, "tie_weights": False},
}
RNN_CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


@pytest.mark.parametrize("recipe", list(TRANSFORMER_RECIPES))
def test_transformer_recipe_decodes_as_it_scores(recipe: str) -> None:
    torch.manual_seed(0)
    model = TransformerLM(TransformerConfig(**TINY, **TRANSFORMER_RECIPES[recipe])).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(200)  # logits far beyond any soft cap
        x = torch.randint(0, 40, (2, 12))
        full, _ = model(x, use_cache=False)
        logits, cache = model(x[:, :5])
        steps = [logits]
        for t in range(5, 12):
            step, cache = model(x[:, t : t + 1], cache)
            steps.append(step)
        torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)
        hidden, _ = model(x, use_cache=False, return_hidden=True)
        torch.testing.assert_close(hidden_token_nll(hidden[:, :-1], model.output_layer, x[:, 1:]),
                                   token_nll(full[:, :-1], x[:, 1:]))
    cap = model.config.logit_softcap
    peak = float(full.abs().max())
    assert (0.9 * cap < peak <= cap) if cap else peak > 5.0  # saturated at the cap, never past it


def test_recipes_change_the_math() -> None:
    """Each knob builds something other than the baseline (a knob wired to nothing would pass
    the decoding test above)."""
    x = torch.randint(0, 40, (2, 12))
    outputs = {}
    for name, knobs in {"base": {}, **TRANSFORMER_RECIPES}.items():
        torch.manual_seed(0)
        model = TransformerLM(TransformerConfig(**TINY, **knobs)).eval()
        with torch.no_grad():
            model.lm_head.weight.mul_(200)
            outputs[name] = model(x, use_cache=False)[0]
    for name in TRANSFORMER_RECIPES:
        assert not torch.allclose(outputs[name], outputs["base"]), name


@pytest.mark.parametrize(("knobs", "named"), [({"qk_norm": True}, "model.qk_norm"),
                                              ({"activation": "relu2"}, "model.activation = relu2"),
                                              ({"logit_softcap": 30.0}, "model.logit_softcap = 30")])
def test_export_refuses_recipes_transformers_lacks(knobs: dict, named: str) -> None:
    with pytest.raises(ExportError, match=named):
        stock_family(TransformerConfig(**TINY, **knobs))


@pytest.mark.parametrize("cell", RNN_CELLS)
def test_layer_by_layer_recurrence_is_the_modules(cell: str) -> None:
    """With its masks at zero, the path that applies DropConnect and locked dropout computes
    what nn.LSTM (GRU, RNN) computes, outputs and gradients."""
    cfg = RNNConfig(vocab_size=30, cell=cell, n_layer=2, n_embd=12, n_hidden=20, dropout=0.0, emb_dropout=0.0)
    torch.manual_seed(0)
    plain = RNNLM(cfg).train()
    layered = RNNLM(RNNConfig(**{**cfg.__dict__, "locked_dropout": True})).train()
    layered.load_state_dict(plain.state_dict())
    x = torch.randint(0, 30, (3, 9))
    state = plain.initial_state(3)
    state.h.normal_()
    a, sa = plain(x, state)
    b, sb = layered(x, state)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sa.h, sb.h, rtol=1e-5, atol=1e-6)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), layered.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_awd_regularisers_train_only() -> None:
    cfg = RNNConfig(vocab_size=30, n_layer=2, n_embd=16, n_hidden=16, dropout=0.3, emb_dropout=0.3,
                    locked_dropout=True, weight_drop=0.5, word_dropout=0.3)
    torch.manual_seed(0)
    model = RNNLM(cfg)
    plain = RNNLM(RNNConfig(**{**cfg.__dict__, "locked_dropout": False, "weight_drop": 0.0, "word_dropout": 0.0}))
    plain.load_state_dict(model.state_dict())
    x = torch.randint(0, 30, (4, 10))
    model.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], plain(x)[0])  # evaluation: the plain model
    model.train()
    a, b = model(x)[0], model(x)[0]
    assert not torch.allclose(a, b)  # fresh masks each forward
    hh = model.rnn.weight_hh_l0.detach().clone()
    a.sum().backward()
    assert torch.equal(model.rnn.weight_hh_l0, hh) and model.rnn.weight_hh_l0.grad.abs().sum() > 0


def test_locked_dropout_shares_one_mask_across_time() -> None:
    model = RNNLM(RNNConfig(vocab_size=10, n_embd=64, n_hidden=8, n_layer=1, locked_dropout=True)).train()
    dropped = model._drop(torch.ones(3, 50, 64), 0.5)
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))  # every step as the first
    assert not torch.equal(dropped[0], dropped[1])  # each sequence its own mask
    assert set(dropped.unique().tolist()) == {0.0, 2.0}
    per_token = RNNLM(RNNConfig(vocab_size=10, n_embd=64, n_hidden=8, n_layer=1)).train()._drop(torch.ones(3, 50, 64), 0.5)
    assert not torch.equal(per_token, per_token[:, :1].expand_as(per_token))


def test_word_dropout_drops_whole_words() -> None:
    model = RNNLM(RNNConfig(vocab_size=6, n_embd=32, n_hidden=8, n_layer=1, word_dropout=0.5)).train()
    tokens = torch.tensor([[0, 1, 2, 3, 4, 5] * 4])
    torch.manual_seed(3)
    rows = model._embed(tokens)[0]
    weight = model.embedding.weight
    for t, token in enumerate(tokens[0].tolist()):
        same = rows[token]  # each occurrence of a word is dropped or kept together
        assert torch.equal(rows[t], same)
        assert torch.equal(same, torch.zeros_like(same)) or torch.allclose(same, weight[token] * 2)
    kept = sum(bool(rows[i].abs().sum() > 0) for i in range(6))
    assert 0 < kept < 6


def test_muon_takes_the_hidden_matrices() -> None:
    model = TransformerLM(TransformerConfig(**TINY, tie_weights=False))
    opt = build_optimizer(model, TrainConfig(optimizer="muon"))
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert muon == {n for n in names.values() if n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))}
    assert {"wte.weight", "lm_head.weight", "ln_f.weight"} <= adamw and not muon & adamw
    assert opt.param_groups[-1] is opt.muon.param_groups[-1]  # one set of groups: the schedule reaches both


@pytest.mark.parametrize(("model", "recipe"), [
    ({"family": "transformer", "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16, "qk_norm": True,
      "activation": "relu2", "logit_softcap": 15.0}, {"optimizer": "muon", "ema": 0.9}),
    ({"family": "rnn", "cell": "lstm", "n_embd": 16, "n_hidden": 16, "n_layer": 2, "dropout": 0.2,
      "locked_dropout": True, "weight_drop": 0.3, "word_dropout": 0.1},
     {"optimizer": "asgd", "asgd_nonmono": 1, "lr": 2.0}),
], ids=["transformer-muon-ema", "lstm-awd-asgd"])
def test_recipes_learn_and_resume_exactly(model: dict, recipe: dict, small_corpus: Path, tmp_path: Path) -> None:
    kw = {"max_steps": 36, "eval_every": 6, **recipe}
    full = train(run_config(small_corpus, tmp_path / "full", model, **kw))
    ls = losses(full)
    assert sum(ls[-5:]) / 5 < sum(ls[:5]) / 5 - 0.3
    paused = Trainer(run_config(small_corpus, tmp_path / "part", model, **kw))
    assert paused.fit(until_step=18).steps == 18
    resumed = Trainer(run_config(small_corpus, tmp_path / "part", model, **kw), resume=True)
    saved, restored = paused.average.to_state(), resumed.average.to_state()
    assert (saved is None) == (restored is None)
    if saved is not None:  # the average so far came back with the run
        assert saved.keys() == restored.keys() and all(torch.equal(saved[k], restored[k]) for k in saved)
    rest = resumed.fit()
    assert losses(full)[18:] == losses(rest)
    assert [r["val_loss"] for r in full.history if "val_loss" in r][3:] == \
        [r["val_loss"] for r in rest.history if "val_loss" in r]
    for name in ("step-00000036", "best"):
        a, _, _ = load_checkpoint(tmp_path / "full" / name)
        b, _, _ = load_checkpoint(tmp_path / "part" / name)
        for (key, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(p, q), (name, key)


def test_averaged_weights_are_evaluated_and_saved(small_corpus: Path, tmp_path: Path) -> None:
    model = {"family": "transformer", "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16}
    trainer = Trainer(run_config(small_corpus, tmp_path, model, max_steps=20, eval_every=1000, ema=0.8))
    result = trainer.fit()  # one evaluation, at the end: the best by definition
    averaged = trainer.average.averaged.module
    assert int(trainer.average.averaged.n_averaged) == 20
    best, _, _ = load_checkpoint(tmp_path / "best")
    raw = trainer.model.state_dict()
    for key, value in best.state_dict().items():
        assert torch.equal(value, averaged.state_dict()[key]), key
    assert any(not torch.equal(v, raw[k]) for k, v in best.state_dict().items())
    assert result.best_val_loss == pytest.approx(trainer.evaluate(trainer.valid_tokens, model=averaged))
    step, _, _ = load_checkpoint(tmp_path / "step-00000020")  # resumable: the raw weights
    assert all(torch.equal(v, raw[k]) for k, v in step.state_dict().items())


def test_asgd_starts_averaging_when_validation_stalls(small_corpus: Path, tmp_path: Path) -> None:
    model = {"family": "rnn", "cell": "gru", "n_embd": 16, "n_hidden": 16, "n_layer": 1}
    # a constant high lr on a tiny corpus: validation soon stops improving, and the trigger fires
    trainer = Trainer(run_config(small_corpus, tmp_path, model, optimizer="asgd", asgd_nonmono=1, lr=5.0,
                                 schedule="constant", max_steps=60, eval_every=3, grad_clip=0.25, threads=1))
    result = trainer.fit()
    vals = [r["val_loss"] for r in result.history if "val_loss" in r]
    stalled = next(i for i in range(1, len(vals)) if vals[i] >= min(vals[:i]))
    assert trainer.average.averaged is not None
    assert int(trainer.average.averaged.n_averaged) == 60 - 3 * (stalled + 1) + 1


@pytest.mark.parametrize(("train_kw", "message"), [
    ({"ema": 0.99, "optimizer": "asgd"}, "both average the weights"),
    ({"ema": 0.99, "fsdp": True}, "not with train.fsdp"),
    ({"optimizer": "muon", "fsdp": True}, "orthogonalises whole matrices: not with train.fsdp"),
    ({"ema": 1.0}, r"train.ema must be in \[0, 1\)"),
    ({"optimizer": "lion"}, "train.optimizer must be one of adamw, sgd, muon, asgd"),
    ({"asgd_nonmono": 0}, "train.asgd_nonmono must be >= 1"),
])
def test_recipe_config_errors(train_kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_config_from_dict({"train": train_kw})


@pytest.mark.parametrize(("model_kw", "message"), [
    ({"family": "rnn", "weight_drop": 1.0}, r"model.weight_drop must be in \[0, 1\)"),
    ({"family": "rnn", "word_dropout": -0.1}, r"model.word_dropout must be in \[0, 1\)"),
    ({"family": "transformer", "logit_softcap": -1.0}, "model.logit_softcap must be >= 0"),
    ({"family": "transformer", "activation": "relu3"}, "gelu_tanh, gelu, silu, relu2"),
])
def test_recipe_model_errors(model_kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_config_from_dict({"model": model_kw})
