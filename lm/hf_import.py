"""Import a transformers checkpoint directory as an lmforge checkpoint (``lmforge import``).

The inverse of ``lm.hf_export``, for the families whose math lmforge's Transformer is:

- **GPT-2** (``GPT2LMHeadModel``): learned positions, biases everywhere, tanh-GELU MLP, tied or
  untied head; ``Conv1D`` weights (``[in, out]``) transposed.
- **GPT-NeoX** (``GPTNeoXForCausalLM``: Pythia), parallel or sequential residuals, rotary on all
  or part of each head, exact or tanh GELU -- and what ``lmforge export --format hf`` writes.

Everything else (Llama and its kin: RMSNorm, SwiGLU, grouped-query attention) is refused with a
message naming the architecture or option, never loaded wrong. The weights come from
``*.safetensors`` only (no pickles); the tokenizer from ``tokenizer.json`` (the ``hf`` kind).
An imported model reads its texts after its end-of-text token, as GPT-2 was trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from lm.context import TextContext
from lm.models import TransformerConfig, build_model

EPS = 1e-5
"""lmforge's LayerNorm epsilon (torch's default): a checkpoint trained with another is refused."""
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
GELU_EXACT = ("gelu",)


def _activation(name: object, what: str) -> str:
    if name in GELU_TANH:
        return "gelu_tanh"
    _require(name in GELU_EXACT, f"{what} {name!r} (lmforge's MLP is GELU, exact or tanh)")
    return "gelu"


class HFImportError(ValueError):
    """A transformers checkpoint lmforge cannot load exactly (the message names what)."""


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise HFImportError(what)


def read_hf_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    _require(path.is_file(), f"{path}: missing (not a transformers checkpoint directory)")
    data = json.loads(path.read_text(encoding="utf-8"))
    _require(isinstance(data, dict), f"{path}: not a JSON object")
    return data


def lmforge_config(hf: dict[str, Any]) -> TransformerConfig:
    """The lmforge ``TransformerConfig`` with the same math, or ``HFImportError`` naming why not."""
    kind = hf.get("model_type")
    tie = bool(hf.get("tie_word_embeddings", kind == "gpt2"))
    if kind == "gpt2":
        E = hf.get("n_embd", 768)
        inner = hf.get("n_inner") or 4 * E
        act = _activation(hf.get("activation_function", "gelu_new"), "activation_function")
        _require(hf.get("layer_norm_epsilon", EPS) == EPS, f"layer_norm_epsilon {hf.get('layer_norm_epsilon')}")
        _require(not hf.get("scale_attn_by_inverse_layer_idx"), "scale_attn_by_inverse_layer_idx")
        _require(hf.get("scale_attn_weights", True), "scale_attn_weights: false")
        _require(not hf.get("add_cross_attention"), "add_cross_attention")
        _require(inner % E == 0, f"n_inner {inner} is not a multiple of n_embd {E}")
        return TransformerConfig(vocab_size=hf.get("vocab_size", 50257), block_size=hf.get("n_positions", 1024),
                                 n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12), n_embd=E,
                                 mlp_ratio=inner // E, bias=True, pos_emb="learned", tie_weights=tie, activation=act)
    if kind == "gpt_neox":
        E = hf["hidden_size"]
        rope = hf.get("rope_parameters") or {}
        fraction = rope.get("partial_rotary_factor", hf.get("rotary_pct", 1.0))
        theta = rope.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
        _require(rope.get("rope_type", "default") == "default", f"rope_type {rope.get('rope_type')!r}")
        act = _activation(hf.get("hidden_act", "gelu"), "hidden_act")
        _require(hf.get("layer_norm_eps", EPS) == EPS, f"layer_norm_eps {hf.get('layer_norm_eps')}")
        _require(hf["intermediate_size"] % E == 0, "intermediate_size is not a multiple of hidden_size")
        return TransformerConfig(vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
                                 n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], n_embd=E,
                                 mlp_ratio=hf["intermediate_size"] // E, bias=bool(hf.get("attention_bias", True)),
                                 pos_emb="rope", rope_base=float(theta), tie_weights=tie, activation=act,
                                 rotary_fraction=float(fraction),
                                 parallel_residual=bool(hf.get("use_parallel_residual", True)))
    raise HFImportError(f"model_type {kind!r} ({', '.join(hf.get('architectures') or ['?'])}) is not supported: "
                       "lmforge imports gpt2 and gpt_neox (sequential residuals, full rotary)")


def lmforge_state(hf: dict[str, torch.Tensor], cfg: TransformerConfig) -> dict[str, torch.Tensor]:
    """The transformers weights under lmforge's names (``lm.hf_export.weight_map`` read
    backwards). A stock bias that a bias-free lmforge model has no place for must be zero --
    else the model would compute something else, and is refused."""
    from lm.hf_export import from_layout, weight_map

    with torch.device("meta"):
        expected = build_model(cfg).state_dict()
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, layout in weight_map(cfg):
        key = next((k for k in (theirs, theirs.removeprefix("transformer.")) if k in hf), None)
        _require(key is not None, f"weight {theirs!r} is missing from the checkpoint")
        tensor = hf[key]
        if ours not in expected:
            _require(not tensor.any(), f"{theirs} is not zero, and a model with bias = false has no place for it")
            continue
        tensor = from_layout(tensor, layout, cfg.n_head)
        _require(tuple(tensor.shape) == tuple(expected[ours].shape),
                 f"weight {theirs!r} has shape {tuple(hf[key].shape)}, not what config.json implies")
        out[ours] = tensor.to(torch.float32).contiguous()
    if cfg.tie_weights:
        out["lm_head.weight"] = out["wte.weight"]
    return out


def load_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    _require(bool(files), f"{directory}: no *.safetensors weights (pickled .bin weights are not read)")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights |= load_file(str(f))
    return weights


def import_hf(directory: str | Path, out: str | Path) -> Path:
    """Convert a transformers checkpoint directory into an lmforge checkpoint at ``out``."""
    from lm.checkpoint import save_checkpoint
    from tokenizer.hf import HFTokenizer

    source = Path(directory)
    cfg = lmforge_config(read_hf_config(source))
    tokenizer = HFTokenizer.from_transformers(source, vocab_size=cfg.vocab_size)
    model = build_model(cfg)
    model.load_state_dict(lmforge_state(load_hf_weights(source), cfg), strict=True)
    context = TextContext(start=(tokenizer.eos_id,), max_length=cfg.block_size)
    from lm.chat_template import from_tokenizer_config

    template = from_tokenizer_config(source)
    return save_checkpoint(out, model, tokenizer, context=context, chat_template=template,
                           training={"imported_from": str(source)})
