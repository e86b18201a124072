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
- RMSNorm with a SiLU-gated MLP (and any grouped-query attention) -> **Llama**
  (``LlamaForCausalLM``): the same rotate-half RoPE; lmforge's fused ``c_attn`` and gated
  ``c_fc`` are split by rows into ``q/k/v_proj`` and ``gate/up_proj`` (layout ``rows:A:B``).

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

class ExportError(ValueError):
    """A model this exporter cannot write in the transformers format (the message says why)."""


def stock_family(cfg: TransformerConfig) -> str:
    """``gpt2``, ``gpt_neox`` or ``llama``: the stock family with ``cfg``'s math, or
    ``ExportError`` naming the knob none of them has."""
    ours = [what for bad, what in [(cfg.qk_norm, "model.qk_norm = true"), (cfg.activation == "relu2", "model.activation = relu2"),
                                   (cfg.logit_softcap > 0, f"model.logit_softcap = {cfg.logit_softcap:g}")] if bad]
    if ours:
        raise ExportError(f"no stock transformers family (gpt2, gpt_neox, llama) has {', '.join(ours)}: "
                          "this model cannot be exported in the transformers format")
    llama_like = cfg.norm == "rmsnorm" or cfg.gated_mlp or cfg.kv_heads != cfg.n_head or cfg.activation == "silu"
    if not llama_like:
        if cfg.pos_emb == "learned" and cfg.parallel_residual:
            raise ExportError("GPT-2 has no parallel residual: a learned-position model with "
                              "model.parallel_residual = true has no stock transformers counterpart")
        return "gpt2" if cfg.pos_emb == "learned" else "gpt_neox"
    refusals = [(cfg.norm != "rmsnorm", "model.norm = layernorm"),
                (not cfg.gated_mlp, "model.gated_mlp = false"), (cfg.activation != "silu", f"model.activation = {cfg.activation}"),
                (cfg.pos_emb != "rope", "model.pos_emb = learned"), (cfg.parallel_residual, "model.parallel_residual = true"),
                (cfg.rotary_fraction != 1.0, f"model.rotary_fraction = {cfg.rotary_fraction}")]
    wrong = [what for bad, what in refusals if bad]
    if wrong:
        raise ExportError("a model with RMSNorm, a gated MLP or grouped-query attention exports as Llama, which "
                          f"has none of: {', '.join(wrong)} (no stock transformers family matches this model)")
    return "llama"


def hf_config(cfg: TransformerConfig) -> dict:
    """The transformers ``config.json`` for ``cfg``."""
    common = {"vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_weights, "bos_token_id": BOS_ID,
              "eos_token_id": EOS_ID, "pad_token_id": PAD_ID, "torch_dtype": "float32"}
    act = "gelu_pytorch_tanh" if cfg.activation == "gelu_tanh" else "gelu"
    family = stock_family(cfg)
    rope = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if family == "llama":
        return {**common, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.n_embd,
                "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
                "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim, "intermediate_size": cfg.mlp_width,
                "hidden_act": "silu", "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
                "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "attention_dropout": 0.0, "pretraining_tp": 1,
                "rope_parameters": rope, "rope_theta": cfg.rope_base, "rope_scaling": None}
    if family == "gpt2":
        return {**common, "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_positions": cfg.block_size,
                "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                "n_inner": cfg.mlp_width, "activation_function": act,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": cfg.norm_eps,
                "scale_attn_weights": True}
    return {**common, "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
            "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "intermediate_size": cfg.mlp_width, "hidden_act": act,
            "max_position_embeddings": cfg.block_size, "layer_norm_eps": cfg.norm_eps,
            "use_parallel_residual": cfg.parallel_residual, "attention_bias": cfg.bias, "attention_dropout": 0.0,
            "hidden_dropout": 0.0, "rope_parameters": {**rope, "partial_rotary_factor": cfg.rotary_fraction},
            "rope_theta": cfg.rope_base, "rotary_pct": cfg.rotary_fraction, "rotary_emb_base": cfg.rope_base}


LAYERS_GPT2 = {"ln_1": "ln_1", "attn.c_attn": "attn.c_attn", "attn.c_proj": "attn.c_proj", "ln_2": "ln_2",
               "mlp.c_fc": "mlp.c_fc", "mlp.c_proj": "mlp.c_proj"}
LAYERS_NEOX = {"ln_1": "input_layernorm", "attn.c_attn": "attention.query_key_value",
               "attn.c_proj": "attention.dense", "ln_2": "post_attention_layernorm",
               "mlp.c_fc": "mlp.dense_h_to_4h", "mlp.c_proj": "mlp.dense_4h_to_h"}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
"""GPT-2's ``Conv1D`` layers: weights stored ``[in, out]``, the transpose of a Linear's."""


def llama_weight_map(cfg: TransformerConfig) -> list[tuple[str, str, str]]:
    """``weight_map`` for Llama: lmforge's fused products split by rows."""
    q, kv, width = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.mlp_width
    pairs = [("wte.weight", "model.embed_tokens.weight", "plain")]
    kinds = ("weight", "bias") if cfg.bias else ("weight",)
    for i in range(cfg.n_layer):
        ours, h = f"blocks.{i}.", f"model.layers.{i}."
        pairs += [(ours + "ln_1.weight", h + "input_layernorm.weight", "plain"),
                  (ours + "ln_2.weight", h + "post_attention_layernorm.weight", "plain")]
        for kind in kinds:
            pairs += [(f"{ours}attn.c_attn.{kind}", f"{h}self_attn.q_proj.{kind}", f"rows:0:{q}"),
                      (f"{ours}attn.c_attn.{kind}", f"{h}self_attn.k_proj.{kind}", f"rows:{q}:{q + kv}"),
                      (f"{ours}attn.c_attn.{kind}", f"{h}self_attn.v_proj.{kind}", f"rows:{q + kv}:{q + 2 * kv}"),
                      (f"{ours}attn.c_proj.{kind}", f"{h}self_attn.o_proj.{kind}", "plain"),
                      (f"{ours}mlp.c_fc.{kind}", f"{h}mlp.gate_proj.{kind}", f"rows:0:{width}"),
                      (f"{ours}mlp.c_fc.{kind}", f"{h}mlp.up_proj.{kind}", f"rows:{width}:{2 * width}"),
                      (f"{ours}mlp.c_proj.{kind}", f"{h}mlp.down_proj.{kind}", "plain")]
    pairs.append(("ln_f.weight", "model.norm.weight", "plain"))
    if not cfg.tie_weights:
        pairs.append(("lm_head.weight", "lm_head.weight", "plain"))
    return pairs


def weight_map(cfg: TransformerConfig) -> list[tuple[str, str, str]]:
    """``(lmforge name, transformers name, layout)`` for every weight the stock family stores --
    the one table export and import (``lm.hf_import``) both read. ``layout``: ``plain``,
    ``transpose`` (GPT-2's Conv1D), ``per_head`` (NeoX's fused q|k|v rows) or ``rows:A:B`` (the
    stock tensor is rows A to B of lmforge's: Llama's separate q/k/v and gate/up projections). A
    bias the stock family has and a bias-free lmforge model lacks is listed too: it exports as
    zeros."""
    if stock_family(cfg) == "llama":
        return llama_weight_map(cfg)
    gpt2 = cfg.pos_emb == "learned"
    pairs = [("wte.weight", "transformer.wte.weight" if gpt2 else "gpt_neox.embed_in.weight", "plain")]
    if gpt2:
        pairs.append(("wpe.weight", "transformer.wpe.weight", "plain"))
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}." if gpt2 else f"gpt_neox.layers.{i}."
        for ours, theirs in (LAYERS_GPT2 if gpt2 else LAYERS_NEOX).items():
            for kind in ("weight", "bias"):
                if kind == "bias" and not gpt2 and ours.startswith("attn.") and not cfg.bias:
                    continue  # NeoX's attention_bias follows the model's; its MLP and norms always have biases
                layout = "plain"
                if gpt2 and f"{ours}.{kind}" in CONV1D:
                    layout = "transpose"
                elif not gpt2 and ours == "attn.c_attn":
                    layout = "per_head"
                pairs.append((f"blocks.{i}.{ours}.{kind}", f"{h}{theirs}.{kind}", layout))
    final = "transformer.ln_f." if gpt2 else "gpt_neox.final_layer_norm."
    pairs += [("ln_f.weight", final + "weight", "plain"), ("ln_f.bias", final + "bias", "plain")]
    if not cfg.tie_weights:
        pairs.append(("lm_head.weight", "lm_head.weight" if gpt2 else "embed_out.weight", "plain"))
    return pairs


def to_layout(t: torch.Tensor, layout: str, heads: int) -> torch.Tensor:
    """An lmforge tensor in the stock family's layout."""
    if layout == "transpose":
        return t.t()
    if layout == "per_head":  # lmforge's rows are [q|k|v, head, dim]; NeoX's [head, q|k|v, dim]
        return t.reshape(3, heads, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
    if layout.startswith("rows:"):
        start, end = (int(n) for n in layout.split(":")[1:])
        return t[start:end]
    return t


def from_layout(t: torch.Tensor, layout: str, heads: int) -> torch.Tensor:
    """A stock-family tensor back in lmforge's layout (``to_layout`` inverted; a ``rows`` part
    stays as it is, and ``lm.hf_import`` puts the parts together)."""
    if layout == "transpose":
        return t.t()
    if layout == "per_head":
        return t.reshape(heads, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
    return t


def hf_state_dict(state: dict[str, torch.Tensor], cfg: TransformerConfig) -> dict[str, torch.Tensor]:
    """lmforge's weights under the stock family's names and layouts (contiguous fp32 copies)."""
    out = {}
    for ours, theirs, layout in weight_map(cfg):
        if ours in state:
            t = state[ours]
        else:  # a bias this model has none of: its weight's rows (a LayerNorm's: its size) of zeros
            t = torch.zeros(state[ours.removesuffix("bias") + "weight"].shape[0])
        out[theirs] = to_layout(t, layout, cfg.n_head).detach().to(torch.float32).contiguous().clone()
    return out


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
