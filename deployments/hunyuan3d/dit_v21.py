"""Hunyuan3D-2.1 flow-matching DiT (``HunYuanDiTPlain``), checkpoint-compatible with the released weights.

A plain pre-norm transformer over [time token; latents]: self-attention, cross-attention to the image tokens
(DINOv2-L, no projection before the blocks), then an MLP, or in the last layers a mixture of experts
(``moe.py``). Blocks after the middle one take a U-Net-style long skip from their mirror. No adaLN: time
enters only as the extra token. Parameter names are the official ones, after :func:`convert_official_state_dict`
(q/k/v unmixing and expert stacking) at load time.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DiTV21Config
from .moe import MoEBlock, MoEImpl, stack_expert_weights


def time_token_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """(B,) flow times in [0, 1] -> (B, dim) as [sin | cos] (the official ``Timesteps``: t is NOT scaled by
    1000 here, unlike the 2.0 DiT, and sin comes first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def unmix_heads(stacked: Tensor, parts: int, num_heads: int) -> list[Tensor]:
    """Undo the official head-interleaved split of concatenated projections.

    Upstream computes ``cat([q, k, v], -1).view(.., H, parts * D)`` and splits each head's slice into parts, so
    its "q" of head h is rows ``h*parts*D .. h*parts*D + D`` of the stacked [W_q; W_k; W_v], not W_q's head h.
    Given the stacked weight (or bias) of shape (parts * H * D, ...), returns the ``parts`` projections that make
    the plain per-head split exact: (parts*H*D, ...) -> parts x (H*D, ...).
    """
    rest = stacked.shape[1:]
    head_dim = stacked.shape[0] // (parts * num_heads)
    grouped = stacked.reshape(num_heads, parts, head_dim, *rest).transpose(0, 1)  # (parts, H, D, ...)
    return list(grouped.reshape(parts, num_heads * head_dim, *rest).unbind(0))


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, L, H*D) -> (B, H, L, D)."""
    b, length, _ = x.shape
    return x.view(b, length, num_heads, -1).transpose(1, 2)


def _qk_norm(cfg: DiTV21Config) -> nn.Module:
    """Per-head RMSNorm on q or k (official ``qk_norm_type: rms``), or nothing."""
    return nn.RMSNorm(cfg.head_dim, eps=1e-6) if cfg.qk_norm else nn.Identity()


class _Attention(nn.Module):
    """Shared by self- and cross-attention: official names ``to_q/to_k/to_v``, ``q_norm/k_norm``, ``out_proj``."""

    def __init__(self, dim: int, kv_dim: int, cfg: DiTV21Config) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.to_q = nn.Linear(dim, dim, bias=cfg.qkv_bias)
        self.to_k = nn.Linear(kv_dim, dim, bias=cfg.qkv_bias)
        self.to_v = nn.Linear(kv_dim, dim, bias=cfg.qkv_bias)
        self.q_norm = _qk_norm(cfg)
        self.k_norm = _qk_norm(cfg)
        self.out_proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x (B, L, C) attends to context (B, T, C_kv) -> (B, L, C)."""
        q = self.q_norm(_heads(self.to_q(x), self.num_heads))  # (B, H, L, D)
        k = self.k_norm(_heads(self.to_k(context), self.num_heads))  # (B, H, T, D)
        v = _heads(self.to_v(context), self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, D)
        b, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, length, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, inner_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, inner_dim)
        self.fc2 = nn.Linear(inner_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DiTBlock(nn.Module):
    """[skip fuse] -> x + self-attn -> x + cross-attn(image tokens) -> x + MLP / MoE (all pre-LayerNorm)."""

    def __init__(self, cfg: DiTV21Config, layer: int, moe_impl: MoEImpl) -> None:
        super().__init__()
        c = cfg.hidden_size
        self.norm1 = nn.LayerNorm(c, eps=1e-6)
        self.attn1 = _Attention(c, c, cfg)
        self.norm2 = nn.LayerNorm(c, eps=1e-6)
        self.attn2 = _Attention(c, cfg.context_dim, cfg)
        self.norm3 = nn.LayerNorm(c, eps=1e-6)
        self.skip_linear: nn.Linear | None = None
        if cfg.has_skip(layer):
            self.skip_norm = nn.LayerNorm(c, eps=1e-6)
            self.skip_linear = nn.Linear(2 * c, c)
        # one of the two, under its official name
        self.moe: MoEBlock | None = None
        self.mlp: MLP | None = None
        if cfg.is_moe_layer(layer):
            self.moe = MoEBlock(c, cfg.mlp_hidden_dim, cfg.num_experts, cfg.moe_top_k, moe_impl)
        else:
            self.mlp = MLP(c, cfg.mlp_hidden_dim)

    def forward(self, x: Tensor, cond: Tensor, skip: Tensor | None) -> Tensor:
        if self.skip_linear is not None:
            if skip is None:
                raise ValueError("this block takes a long skip")
            x = self.skip_norm(self.skip_linear(torch.cat([skip, x], dim=-1)))
        h = self.norm1(x)
        x = x + self.attn1(h, h)
        x = x + self.attn2(self.norm2(x), cond)
        ffn = self.moe if self.moe is not None else self.mlp
        assert ffn is not None  # set in __init__
        return x + ffn(self.norm3(x))


class TimestepEmbedder(nn.Module):
    """Official ``t_embedder``: sinusoid of width C -> Linear(C, 4C) -> GELU -> Linear(4C, C)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, 4 * hidden_size), nn.GELU(), nn.Linear(4 * hidden_size, hidden_size)
        )

    def forward(self, t: Tensor) -> Tensor:
        """(B,) -> (B, 1, C) time token."""
        frequencies = time_token_embedding(t, self.hidden_size).to(cast(nn.Linear, self.mlp[0]).weight.dtype)
        return self.mlp(frequencies)[:, None, :]


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_channels, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1 + N, C) -> (B, N, C_latent): the time token is dropped."""
        return self.linear(self.norm_final(x)[:, 1:])


class HunYuanDiTPlain(nn.Module):
    def __init__(self, cfg: DiTV21Config, moe_impl: MoEImpl = "auto") -> None:
        super().__init__()
        self.cfg = cfg
        self.x_embedder = nn.Linear(cfg.in_channels, cfg.hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(cfg.hidden_size)
        self.blocks = nn.ModuleList([DiTBlock(cfg, layer, moe_impl) for layer in range(cfg.depth)])
        self.final_layer = FinalLayer(cfg.hidden_size, cfg.in_channels)

    def embed_condition(self, cond: Tensor) -> Tensor:
        """The image tokens as they are: each block's cross-attention projects them itself (the pipeline's
        embed-once contract of :class:`~.dit.Hunyuan3DDiT` holds trivially)."""
        return cond

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        cond: Tensor,
        guidance: Tensor | None = None,
        cond_copies: int = 1,
        cond_embedded: bool = False,
    ) -> Tensor:
        """Velocity for latents at flow time t.

        x: (B, N, C_latent) noisy latents; t: (B,) in [0, 1] (0 = noise, 1 = data); cond: (B, T, C_ctx) image
        tokens; guidance: unused (the official 2.1 model ignores the pipeline's ``guidance``: always CFG);
        cond_copies: each condition token stands for this many identical ones. The condition is only ever
        attended to on its own (cross-attention, no latent keys beside it), and k identical keys with their
        values give the same softmax average as one, so ``cond_copies`` changes nothing here: CFG's
        unconditional context (T zero tokens) runs as ONE token. Returns (B, N, C_latent).
        """
        if cond_copies < 1:
            raise ValueError(f"cond_copies must be >= 1, got {cond_copies}")
        del guidance, cond_embedded  # accepted for the shared DiT call contract
        tokens = torch.cat([self.t_embedder(t), self.x_embedder(x)], dim=1)  # (B, 1 + N, C)
        skips: list[Tensor] = []
        middle = self.cfg.depth // 2
        for layer, block in enumerate(self.blocks):
            tokens = block(tokens, cond, skips.pop() if self.cfg.has_skip(layer) else None)
            if layer < middle:
                skips.append(tokens)
        return self.final_layer(tokens)


def convert_official_state_dict(state_dict: dict[str, Tensor], cfg: DiTV21Config) -> dict[str, Tensor]:
    """Official ``HunYuanDiTPlain`` state dict -> ours: per block, q/k/v rows unmixed (:func:`unmix_heads`) and
    the experts stacked. Returns a new dict; every other key passes through unchanged (the strict load checks
    them)."""
    out = dict(state_dict)
    for layer in range(cfg.depth):
        prefix = f"blocks.{layer}."
        for attn, names in (("attn1", ("to_q", "to_k", "to_v")), ("attn2", ("to_k", "to_v"))):
            for kind in ("weight", "bias") if cfg.qkv_bias else ("weight",):
                keys = [f"{prefix}{attn}.{name}.{kind}" for name in names]
                stacked = torch.cat([out[key] for key in keys], dim=0)
                for key, value in zip(keys, unmix_heads(stacked, len(names), cfg.num_heads), strict=True):
                    out[key] = value.contiguous()
        if cfg.is_moe_layer(layer):
            stack_expert_weights(out, f"{prefix}moe.", cfg.num_experts)
    return out
