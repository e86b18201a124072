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
    """The transformers weights under lmforge's names (``lm.hf_export.hf_state_dict`` inverted)."""
    from lm.hf_export import hf_state_dict

    names = hf_state_dict(_zeros_like_lmforge(cfg), cfg)  # the HF name of every lmforge weight, via the exporter
    gpt2 = cfg.pos_emb == "learned"
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _name_pairs(cfg).items():
        key = next((k for k in (theirs, theirs.removeprefix("transformer.")) if k in hf), theirs)
        _require(key in hf, f"weight {theirs!r} is missing from the checkpoint")
        tensor = hf[key]
        _require(tuple(tensor.shape) == tuple(names[theirs].shape),
                 f"weight {theirs!r} has shape {tuple(tensor.shape)}, expected {tuple(names[theirs].shape)}")
        if gpt2 and theirs.endswith(".weight") and any(m in theirs for m in ("c_attn", "c_proj", "c_fc")):
            tensor = tensor.t()
        elif not gpt2 and "query_key_value" in theirs:
            tensor = _from_per_head(tensor, cfg.n_head)
        out[ours] = tensor.to(torch.float32).contiguous()
    if cfg.tie_weights:
        out["lm_head.weight"] = out["wte.weight"]
    return out


def _zeros_like_lmforge(cfg: TransformerConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        model = build_model(cfg)
    return {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}


def _name_pairs(cfg: TransformerConfig) -> dict[str, str]:
    """lmforge name -> transformers name, for every stored weight."""
    gpt2 = cfg.pos_emb == "learned"
    pairs = {"wte.weight": "transformer.wte.weight" if gpt2 else "gpt_neox.embed_in.weight"}
    if gpt2:
        pairs["wpe.weight"] = "transformer.wpe.weight"
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        if gpt2:
            h = f"transformer.h.{i}."
            local = {"ln_1": "ln_1", "attn.c_attn": "attn.c_attn", "attn.c_proj": "attn.c_proj", "ln_2": "ln_2",
                     "mlp.c_fc": "mlp.c_fc", "mlp.c_proj": "mlp.c_proj"}
        else:
            h = f"gpt_neox.layers.{i}."
            local = {"ln_1": "input_layernorm", "attn.c_attn": "attention.query_key_value",
                     "attn.c_proj": "attention.dense", "ln_2": "post_attention_layernorm",
                     "mlp.c_fc": "mlp.dense_h_to_4h", "mlp.c_proj": "mlp.dense_4h_to_h"}
        for ours, theirs in local.items():
            pairs[p + ours + ".weight"] = h + theirs + ".weight"
            if cfg.bias:
                pairs[p + ours + ".bias"] = h + theirs + ".bias"
    final = "transformer.ln_f." if gpt2 else "gpt_neox.final_layer_norm."
    pairs["ln_f.weight"] = final + "weight"
    if cfg.bias:
        pairs["ln_f.bias"] = final + "bias"
    if not cfg.tie_weights:
        pairs["lm_head.weight"] = "lm_head.weight" if gpt2 else "embed_out.weight"
    return pairs


def _from_per_head(fused: torch.Tensor, heads: int) -> torch.Tensor:
    """GPT-NeoX's ``[head, q|k|v, dim]`` rows back to lmforge's ``[q|k|v, head, dim]``."""
    dim = fused.shape[0] // (3 * heads)
    return fused.reshape(heads, 3, dim, *fused.shape[1:]).transpose(0, 1).reshape(fused.shape)


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
