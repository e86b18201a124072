"""Export an lmforge Transformer in the transformers format: a directory that
``transformers.AutoModelForCausalLM.from_pretrained`` loads with no custom code.

lmforge's Transformer is a pre-LayerNorm decoder with a tanh-GELU MLP, so each variant maps onto
a stock family whose math is the same, weight for weight:

- learned positions -> **GPT-2** (``GPT2LMHeadModel``): the same fused ``c_attn`` (q, k, v in
  that order) and module names; GPT-2's ``Conv1D`` stores weights as ``[in, out]``, so they are
  transposed.
- RoPE -> **GPT-NeoX** (``GPTNeoXForCausalLM``, Pythia's) with the model's rotary dimensions and
  residuals (``use_parallel_residual``), the same rotate-half convention and frequencies;
  its fused ``query_key_value`` is laid out per head (``[head, q|k|v, dim]``), so rows are
  regrouped.

A model trained without biases gets zero biases where the stock family has them (GPT-2's
layers, NeoX's MLP and LayerNorms): adding zero changes nothing. Dropout is off (inference).
Nothing of transformers is imported: the files are plain JSON and safetensors. RNN families have
no stock counterpart and are refused. The tokenizer goes with it where ``tokenizer.hf`` can write
its kind (``tokenizer.json``, the same ids); the others export the model alone, and say so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from lm.models import TransformerConfig
from tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, TokenizerError
from tokenizer import hf as hf_tokenizer

log = logging.getLogger(__name__)

HF_LAYER_NORM_EPS = 1e-5
"""torch's LayerNorm default, which lmforge's blocks use."""


class ExportError(ValueError):
    """A model this exporter cannot write in the transformers format (the message says why)."""


def hf_config(cfg: TransformerConfig) -> dict:
    """The transformers ``config.json`` for ``cfg``."""
    common = {"vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_weights, "bos_token_id": BOS_ID,
              "eos_token_id": EOS_ID, "pad_token_id": PAD_ID, "torch_dtype": "float32"}
    act = "gelu_pytorch_tanh" if cfg.activation == "gelu_tanh" else "gelu"
    if cfg.pos_emb == "learned":
        if cfg.parallel_residual:
            raise ExportError("GPT-2 has no parallel residual: a learned-position model with "
                              "model.parallel_residual = true has no stock transformers counterpart")
        return {**common, "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_positions": cfg.block_size,
                "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                "n_inner": cfg.mlp_ratio * cfg.n_embd, "activation_function": act,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": HF_LAYER_NORM_EPS,
                "scale_attn_weights": True}
    return {**common, "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
            "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "intermediate_size": cfg.mlp_ratio * cfg.n_embd, "hidden_act": act,
            "max_position_embeddings": cfg.block_size, "layer_norm_eps": HF_LAYER_NORM_EPS,
            "use_parallel_residual": cfg.parallel_residual, "attention_bias": cfg.bias, "attention_dropout": 0.0,
            "hidden_dropout": 0.0, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base,
                                                       "partial_rotary_factor": cfg.rotary_fraction},
            "rope_theta": cfg.rope_base, "rotary_pct": cfg.rotary_fraction, "rotary_emb_base": cfg.rope_base}


def hf_state_dict(state: dict[str, torch.Tensor], cfg: TransformerConfig) -> dict[str, torch.Tensor]:
    """lmforge's weights under the stock family's names and layouts (contiguous fp32 copies)."""
    out: dict[str, torch.Tensor] = {}

    def bias(name: str, size: int) -> torch.Tensor:
        return state[name] if name in state else torch.zeros(size)

    E, F = cfg.n_embd, cfg.mlp_ratio * cfg.n_embd
    gpt2 = cfg.pos_emb == "learned"
    if gpt2:
        out["transformer.wte.weight"] = state["wte.weight"]
        out["transformer.wpe.weight"] = state["wpe.weight"]
    else:
        out["gpt_neox.embed_in.weight"] = state["wte.weight"]
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        qkv_w, qkv_b = state[p + "attn.c_attn.weight"], bias(p + "attn.c_attn.bias", 3 * E)
        if gpt2:
            h = f"transformer.h.{i}."
            out |= {
                h + "ln_1.weight": state[p + "ln_1.weight"], h + "ln_1.bias": bias(p + "ln_1.bias", E),
                h + "attn.c_attn.weight": qkv_w.t(), h + "attn.c_attn.bias": qkv_b,
                h + "attn.c_proj.weight": state[p + "attn.c_proj.weight"].t(),
                h + "attn.c_proj.bias": bias(p + "attn.c_proj.bias", E),
                h + "ln_2.weight": state[p + "ln_2.weight"], h + "ln_2.bias": bias(p + "ln_2.bias", E),
                h + "mlp.c_fc.weight": state[p + "mlp.c_fc.weight"].t(), h + "mlp.c_fc.bias": bias(p + "mlp.c_fc.bias", F),
                h + "mlp.c_proj.weight": state[p + "mlp.c_proj.weight"].t(),
                h + "mlp.c_proj.bias": bias(p + "mlp.c_proj.bias", E),
            }
            continue
        h = f"gpt_neox.layers.{i}."
        out |= {
            h + "input_layernorm.weight": state[p + "ln_1.weight"], h + "input_layernorm.bias": bias(p + "ln_1.bias", E),
            h + "attention.query_key_value.weight": _per_head(qkv_w, cfg.n_head),
            h + "attention.dense.weight": state[p + "attn.c_proj.weight"],
            h + "post_attention_layernorm.weight": state[p + "ln_2.weight"],
            h + "post_attention_layernorm.bias": bias(p + "ln_2.bias", E),
            h + "mlp.dense_h_to_4h.weight": state[p + "mlp.c_fc.weight"],
            h + "mlp.dense_h_to_4h.bias": bias(p + "mlp.c_fc.bias", F),
            h + "mlp.dense_4h_to_h.weight": state[p + "mlp.c_proj.weight"],
            h + "mlp.dense_4h_to_h.bias": bias(p + "mlp.c_proj.bias", E),
        }
        if cfg.bias:
            out[h + "attention.query_key_value.bias"] = _per_head(qkv_b, cfg.n_head)
            out[h + "attention.dense.bias"] = state[p + "attn.c_proj.bias"]
    final = "transformer.ln_f." if gpt2 else "gpt_neox.final_layer_norm."
    out[final + "weight"], out[final + "bias"] = state["ln_f.weight"], bias("ln_f.bias", E)
    if not cfg.tie_weights:
        out["lm_head.weight" if gpt2 else "embed_out.weight"] = state["lm_head.weight"]
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in out.items()}


def _per_head(fused: torch.Tensor, heads: int) -> torch.Tensor:
    """A fused q|k|v projection's rows regrouped from lmforge's ``[q|k|v, head, dim]`` to
    GPT-NeoX's ``[head, q|k|v, dim]``."""
    dim = fused.shape[0] // (3 * heads)
    return fused.reshape(3, heads, dim, *fused.shape[1:]).transpose(0, 1).reshape(fused.shape)


def export_hf(model: torch.nn.Module, directory: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write ``model`` (an lmforge Transformer) as a transformers checkpoint into ``directory``,
    with ``tokenizer`` as ``tokenizer.json`` when its kind can be written (else a warning)."""
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, TransformerConfig):
        family = getattr(cfg, "family", type(model).__name__)
        raise ExportError(f"--format hf exports Transformers; a {family} model has no transformers counterpart "
                          "(export it in lmforge's own format)")
    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")  # written whole, then put in place
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg), indent=2) + "\n", encoding="utf-8")
        save_file(hf_state_dict(model.state_dict(), cfg), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            try:
                hf_tokenizer.write(tokenizer, tmp, model_max_length=cfg.block_size)
            except TokenizerError as exc:
                log.warning("%s", exc)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
