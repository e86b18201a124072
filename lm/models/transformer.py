"""Pre-norm causal Transformer decoder (architecture only): GPT-2's block, and through
``TransformerConfig``'s knobs GPT-NeoX's and Llama's (RMSNorm, SwiGLU, grouped-query attention).

Initialisation: normal(0, 0.02) everywhere, with the two residual output projections of each
block scaled by 1/sqrt(2 * n_layer) (GPT-2, Radford et al. 2019): each block adds two terms to
the residual stream, so this keeps its variance roughly constant in depth.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lm.models.config import TransformerConfig
from lm.models.state import KVCache


def rope_tables(head_dim: int, length: int, base: float, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Rotary position embedding tables (Su et al.) ``[length, head_dim]`` in the form
    ``apply_rope`` takes: ``cos`` repeated for both halves, and ``sin`` negated for the first."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the two halves ``(x1, x2)`` of the last dimension of ``x`` by position:
    ``(x1 cos - x2 sin, x2 cos + x1 sin)``, as ``x * cos + swap(x) * sin`` with the tables of
    ``rope_tables`` -- the same floats as the two-halves form (and transformers' rotate_half),
    in four operations instead of seven, which training pays for in each layer, both ways (the
    swap a ``roll``, whose backward is one roll too, where slices' backward fills zeros).
    Forward and backward 495 -> 310 us at the benchmark Transformer's q and k, bit for bit."""
    swapped = x.roll(x.shape[-1] // 2, dims=-1)
    return x * cos.to(x.dtype) + swapped * sin.to(x.dtype)


def apply_dropout(module: nn.Dropout, x: Tensor) -> Tensor:
    """``module(x)``, skipped outright at eval or p == 0: decoding would otherwise pay a module
    call for a no-op three times per block per step."""
    return module(x) if module.training and module.p > 0 else x


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head = cfg.n_head, cfg.kv_heads
        self.head_dim = cfg.head_dim
        # q, k and v in one product: rows [q (n_head heads) | k (n_kv_head) | v (n_kv_head)]
        self.c_attn = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        cache: KVCache | None,
        layer: int,
        mask: Tensor | None,
        is_causal: bool,
    ) -> Tensor:
        B, T, C = x.shape
        H, D = self.n_head, self.head_dim
        qkv = self.c_attn(x)
        gqa = self.n_kv_head != H
        if gqa:
            q, k, v = (t.view(B, T, -1, D) for t in qkv.split([H * D, self.n_kv_head * D, self.n_kv_head * D], -1))
        else:
            q, k, v = qkv.view(B, T, 3, H, D).unbind(2)  # (B, T, nh, hs) each
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = (t.unsqueeze(-2) for t in rope)  # over heads
            rd = cos.shape[-1]  # the rotated dimensions (all, or the first of each head)
            if not gqa and rd == D and self.q_norm is None:  # q and k side by side: one rotation for both
                q, k = apply_rope(qkv.view(B, T, 3, H, D)[:, :, :2], cos.unsqueeze(-2), sin.unsqueeze(-2)).unbind(2)
            elif rd == D:
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            else:
                q, k = (torch.cat([apply_rope(t[..., :rd], cos, sin), t[..., rd:]], dim=-1) for t in (q, k))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            start = cache.length
            k_all, v_all = cache.k.select(0, layer), cache.v.select(0, layer)  # (B, nh, capacity, hs)
            k_all.narrow(2, start, T).copy_(k)
            v_all.narrow(2, start, T).copy_(v)
            k, v = k_all.narrow(2, 0, start + T), v_all.narrow(2, 0, start + T)
        dtype = v.dtype
        dropout_p = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
            # CPU's low-precision SDPA kernels are 3-4x slower than fp32 at these sizes, forward
            # and backward (bench/train.py), and fp32 keeps the softmax accurate; the projections
            # stay in bf16. Autocast would cast the inputs straight back down, so it is off here.
            q, k, v = q.float().contiguous(), k.float().contiguous(), v.float().contiguous()
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                   is_causal=is_causal, enable_gqa=gqa).to(dtype)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
                                               enable_gqa=gqa)
        y = y.transpose(1, 2).reshape(B, T, C)
        return apply_dropout(self.resid_dropout, self.c_proj(y))


def relu2(x: Tensor) -> Tensor:
    """Squared ReLU (So et al. 2021, Primer)."""
    return F.relu(x).square()


def activation(name: str):  # noqa: ANN201 -- Tensor -> Tensor
    """The MLP's activation function by config name."""
    if name == "silu":
        return F.silu
    if name == "relu2":
        return relu2
    return functools.partial(F.gelu, approximate="tanh" if name == "gelu_tanh" else "none")  # picklable


class MLP(nn.Module):
    """``c_proj(act(c_fc(x)))``; gated, ``c_fc`` holds the gate's rows then the up projection's
    (one product for both) and the block is ``c_proj(act(gate) * up)``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        width = cfg.mlp_width
        self.gated = cfg.gated_mlp
        self.c_fc = nn.Linear(cfg.n_embd, 2 * width if self.gated else width, bias=cfg.bias)
        self.c_proj = nn.Linear(width, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.act = activation(cfg.activation)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return apply_dropout(self.dropout, self.c_proj(h))


def norm_layer(cfg: TransformerConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.ln_1 = norm_layer(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = norm_layer(cfg)
        self.mlp = MLP(cfg)
        self.parallel = cfg.parallel_residual

    def forward(self, x: Tensor, rope, cache, layer: int, mask, is_causal: bool) -> Tensor:  # noqa: ANN001
        if self.parallel:  # GPT-NeoX: both read the block's input
            return x + self.attn(self.ln_1(x), rope, cache, layer, mask, is_causal) + self.mlp(self.ln_2(x))
        x = x + self.attn(self.ln_1(x), rope, cache, layer, mask, is_causal)
        return x + self.mlp(self.ln_2(x))


class SoftcappedHead(nn.Module):
    """The output layer followed by ``logit_softcap``'s squashing: what ``output_layer`` is for
    a soft-capped model, so scoring in slices (``lm.losses``) applies the same cap."""

    def __init__(self, head: nn.Linear, cap: float) -> None:
        super().__init__()
        self.head, self.cap = head, cap

    @property
    def out_features(self) -> int:
        return self.head.out_features

    @property
    def weight(self) -> Tensor:
        return self.head.weight

    def forward(self, x: Tensor) -> Tensor:
        return softcap(self.head(x), self.cap)


def softcap(logits: Tensor, cap: float) -> Tensor:
    """``cap * tanh(logits / cap)``; ``cap`` 0 leaves the logits as they are."""
    return logits if not cap else cap * torch.tanh(logits / cap)


class TransformerLM(nn.Module):
    """``forward(tokens [B, T], state=None) -> (logits [B, T, V], KVCache | None)``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos_emb == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = norm_layer(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        if cfg.pos_emb == "rope":
            cos, sin = rope_tables(cfg.rotary_dims, cfg.block_size, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layer))
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)  # norm weights

    @property
    def max_context(self) -> int:
        return self.config.block_size

    def _rope(self, pos: Tensor, bound: int) -> tuple[Tensor, Tensor]:
        """cos/sin (``rope_tables``) for positions ``pos`` ``[T]`` or ``[B, T]``: ``[(B,) T, rotated dims]``.

        ``bound`` is a host-side upper bound on ``pos`` (slots used), so the usual case reads no
        value back from the device; the exact maximum is taken only when the table may be short.
        """
        if bound >= self.rope_cos.shape[0] and (need := int(pos.max()) + 1) > self.rope_cos.shape[0]:
            cos, sin = rope_tables(self.rope_cos.shape[1], need, self.config.rope_base, pos.device)
            self.rope_cos, self.rope_sin = cos, sin
        return self.rope_cos[pos], self.rope_sin[pos]

    def forward(
        self,
        tokens: Tensor,
        state: KVCache | None = None,
        *,
        pad_mask: Tensor | None = None,
        use_cache: bool = True,
        return_hidden: bool = False,
    ) -> tuple[Tensor, KVCache | None]:
        """Run ``tokens`` after ``state``.

        ``pad_mask`` ``[B, T]`` is True for real tokens (left padding only). With
        ``use_cache=False`` and no state this is the plain training forward (causal SDPA).
        ``return_hidden`` returns the final hidden states ``[B, T, n_embd]`` instead of logits
        (apply ``output_layer`` to them; scoring does so in slices, see ``lm.losses``).
        """
        B, T = tokens.shape
        device = tokens.device
        if not use_cache and state is None and pad_mask is None:
            pos = torch.arange(T, device=device)
            return self._run(tokens, pos, T - 1, None, None, True, return_hidden), None

        cache = state
        start = 0 if cache is None else cache.length
        base = torch.zeros(B, dtype=torch.long, device=device) if cache is None else cache.next_pos
        if pad_mask is None:
            pos = base[:, None] + torch.arange(T, device=device)
            if cache is not None and not cache.padded and bool((base == base[0]).all()):
                pos = pos[0]
        else:
            pos = base[:, None] + (pad_mask.long().cumsum(1) - 1).clamp_min(0)
        # positions never exceed the slot index, so start + T - 1 bounds them without a device sync
        bound = start + T - 1
        if self.wpe is not None and bound >= self.config.block_size and int(pos.max()) >= self.config.block_size:
            raise ValueError(
                f"position {int(pos.max())} is beyond block_size {self.config.block_size}; "
                "slide the context window (the decoding engine does this)"
            )
        if cache is None:
            cfg = self.config
            cache = KVCache.empty(cfg.n_layer, B, cfg.kv_heads, cfg.head_dim,
                                  T + KVCache.GROW, device, self._cache_dtype())
        else:
            cache.reserve(T)
        S = start + T
        cache.valid[:, start:S] = True if pad_mask is None else pad_mask
        padded = cache.padded or pad_mask is not None and not bool(pad_mask.all())

        mask: Tensor | None = None
        is_causal = False
        if padded:
            # (T, S) causal with offset, AND key validity; a query always sees itself so rows of
            # pure padding stay finite (their outputs are never used).
            q_idx = torch.arange(start, S, device=device)[:, None]
            k_idx = torch.arange(S, device=device)[None, :]
            causal = k_idx <= q_idx
            mask = (causal[None] & cache.valid[:, None, :S]) | (k_idx == q_idx)[None]
            mask = mask[:, None]  # (B, 1, T, S)
        elif T > 1:
            if start == 0:
                is_causal = True
            else:
                q_idx = torch.arange(start, S, device=device)[:, None]
                mask = torch.arange(S, device=device)[None, :] <= q_idx
        logits = self._run(tokens, pos, bound, cache, mask, is_causal, return_hidden)
        cache.length = S
        cache.padded = padded
        cache.next_pos = base + (T if pad_mask is None else pad_mask.long().sum(1))
        return logits, cache

    def _cache_dtype(self) -> torch.dtype:
        if torch.is_autocast_enabled(self.wte.weight.device.type):
            return torch.get_autocast_dtype(self.wte.weight.device.type)
        return self.wte.weight.dtype

    @property
    def output_layer(self) -> nn.Module:
        """The layer that turns final hidden states into logits (with the soft cap, if any)."""
        return SoftcappedHead(self.lm_head, self.config.logit_softcap) if self.config.logit_softcap else self.lm_head

    def _run(self, tokens: Tensor, pos: Tensor, bound: int, cache: KVCache | None, mask: Tensor | None,
             is_causal: bool, return_hidden: bool = False) -> Tensor:
        x = self.wte(tokens)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(pos)
        else:
            rope = self._rope(pos, bound)
        x = apply_dropout(self.drop, x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i, mask, is_causal)
        x = self.ln_f(x)
        return x if return_hidden else softcap(self.lm_head(x), self.config.logit_softcap)
