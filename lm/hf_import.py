"""Import a transformers checkpoint directory as an lmforge checkpoint (``lmforge import``).

The inverse of ``lm.hf_export``, for the families whose math lmforge's Transformer is:

- **GPT-2** (``GPT2LMHeadModel``): learned positions, biases everywhere, tanh-GELU MLP, tied or
  untied head; ``Conv1D`` weights (``[in, out]``) transposed.
- **GPT-NeoX** (``GPTNeoXForCausalLM``: Pythia), parallel or sequential residuals, rotary on all
  or part of each head, exact or tanh GELU -- and what ``lmforge export --format hf`` writes.

- **Llama** (``LlamaForCausalLM``: SmolLM/SmolLM2, TinyLlama; and Mistral without its sliding
  window): RMSNorm, SwiGLU, grouped-query attention, ``rope_theta``, tied or untied head.

Anything else -- another architecture, or an option lmforge does not compute (rope scaling,
sliding-window attention, a head size other than ``hidden_size / heads``, biases on some
projections only) -- is refused with a message naming it, never loaded wrong. The weights come
from ``*.safetensors`` only (no pickles); the tokenizer from ``tokenizer.json`` (the ``hf``
kind). An imported model reads its texts after what its tokenizer puts before a text (Llama's
``<s>``), or, where it puts nothing, after its end-of-text token, as GPT-2 was trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from lm.context import TextContext
from lm.models import TransformerConfig, build_model

GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
GELU_EXACT = ("gelu",)


def _activation(name: object, what: str) -> str:
    if name in GELU_TANH:
        return "gelu_tanh"
    _require(name in GELU_EXACT, f"{what} {name!r} (lmforge's MLP is GELU, exact or tanh)")
    return "gelu"


def _mlp(width: int, n_embd: int) -> dict[str, int]:
    """The MLP width as lmforge writes it: a ratio where it is one, else ``mlp_hidden``."""
    return {"mlp_ratio": width // n_embd} if width % n_embd == 0 else {"mlp_hidden": width}


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
        _require(not hf.get("scale_attn_by_inverse_layer_idx"), "scale_attn_by_inverse_layer_idx")
        _require(hf.get("scale_attn_weights", True), "scale_attn_weights: false")
        _require(not hf.get("add_cross_attention"), "add_cross_attention")
        return TransformerConfig(vocab_size=hf.get("vocab_size", 50257), block_size=hf.get("n_positions", 1024),
                                 n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12), n_embd=E,
                                 **_mlp(inner, E), bias=True, pos_emb="learned", tie_weights=tie, activation=act,
                                 norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)))
    if kind == "gpt_neox":
        E = hf["hidden_size"]
        rope = hf.get("rope_parameters") or {}
        fraction = rope.get("partial_rotary_factor", hf.get("rotary_pct", 1.0))
        theta = rope.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
        _require(rope.get("rope_type", "default") == "default", f"rope_type {rope.get('rope_type')!r}")
        act = _activation(hf.get("hidden_act", "gelu"), "hidden_act")
        return TransformerConfig(vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
                                 n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], n_embd=E,
                                 **_mlp(hf["intermediate_size"], E), bias=bool(hf.get("attention_bias", True)),
                                 pos_emb="rope", rope_base=float(theta), tie_weights=tie, activation=act,
                                 rotary_fraction=float(fraction),
                                 parallel_residual=bool(hf.get("use_parallel_residual", True)),
                                 norm_eps=float(hf.get("layer_norm_eps", 1e-5)))
    if kind in ("llama", "mistral"):
        return llama_config(hf, tie)
    raise HFImportError(f"model_type {kind!r} ({', '.join(hf.get('architectures') or ['?'])}) is not supported: "
                       "lmforge imports gpt2, gpt_neox (Pythia) and llama (and mistral without a sliding window)")


def llama_config(hf: dict[str, Any], tie: bool) -> TransformerConfig:
    E, heads = hf["hidden_size"], hf["num_attention_heads"]
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    _require(rope.get("rope_type", "default") == "default" and not scaling,
             f"rope scaling {scaling or rope.get('rope_type')!r} (lmforge computes plain RoPE only)")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    _require(hf.get("sliding_window") is None, f"sliding_window {hf.get('sliding_window')} (sliding-window attention)")
    _require(hf.get("hidden_act", "silu") == "silu", f"hidden_act {hf.get('hidden_act')!r} (Llama's MLP is SiLU-gated)")
    head_dim = hf.get("head_dim") or E // heads
    _require(head_dim * heads == E, f"head_dim {head_dim} with {heads} heads is not hidden_size {E}")
    bias = bool(hf.get("attention_bias", False))
    _require(bias == bool(hf.get("mlp_bias", False)),
             "attention_bias and mlp_bias differ (lmforge's bias key covers every projection)")
    _require(hf.get("pretraining_tp", 1) == 1, f"pretraining_tp {hf.get('pretraining_tp')}")
    kv = hf.get("num_key_value_heads") or heads
    return TransformerConfig(vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
                             n_layer=hf["num_hidden_layers"], n_head=heads,
                             n_kv_head=None if kv == heads else kv, n_embd=E,
                             mlp_hidden=hf["intermediate_size"], gated_mlp=True, activation="silu", norm="rmsnorm",
                             norm_eps=float(hf.get("rms_norm_eps", 1e-6)), bias=bias, pos_emb="rope",
                             rope_base=float(theta), tie_weights=tie)


def lmforge_state(hf: dict[str, torch.Tensor], cfg: TransformerConfig) -> dict[str, torch.Tensor]:
    """The transformers weights under lmforge's names (``lm.hf_export.weight_map`` read
    backwards; the ``rows`` parts of one lmforge tensor, Llama's q/k/v, joined in order). A stock
    bias that a bias-free lmforge model has no place for must be zero -- else the model would
    compute something else, and is refused."""
    from lm.hf_export import from_layout, weight_map

    with torch.device("meta"):
        expected = build_model(cfg).state_dict()
    parts: dict[str, list[torch.Tensor]] = {}
    for ours, theirs, layout in weight_map(cfg):
        key = next((k for k in (theirs, theirs.removeprefix("transformer.")) if k in hf), None)
        _require(key is not None, f"weight {theirs!r} is missing from the checkpoint")
        tensor = hf[key]
        if ours not in expected:
            _require(not tensor.any(), f"{theirs} is not zero, and a model with bias = false has no place for it")
            continue
        if layout.startswith("rows:"):
            start, end = (int(n) for n in layout.split(":")[1:])
            _require(tensor.shape[0] == end - start and tuple(tensor.shape[1:]) == tuple(expected[ours].shape[1:]),
                     f"weight {theirs!r} has shape {tuple(tensor.shape)}, not what config.json implies")
        parts.setdefault(ours, []).append((theirs, from_layout(tensor, layout, cfg.n_head)))
    out: dict[str, torch.Tensor] = {}
    for ours, named in parts.items():
        tensor = torch.cat([t for _, t in named]) if len(named) > 1 else named[0][1]
        _require(tuple(tensor.shape) == tuple(expected[ours].shape),
                 f"weight {' + '.join(repr(n) for n, _ in named)} has shape {tuple(tensor.shape)}, "
                 "not what config.json implies")
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
    context = TextContext(start=tokenizer.text_prefix(source) or (tokenizer.eos_id,), max_length=cfg.block_size)
    from lm.chat_template import from_tokenizer_config

    template = from_tokenizer_config(source)
    return save_checkpoint(out, model, tokenizer, context=context, chat_template=template,
                           training={"imported_from": str(source)})
