"""Decoder half of the Hunyuan3D-2 ShapeVAE: latents -> token set -> occupancy logits at query points.

Names follow the released ``vae.*`` checkpoint keys. Unlike the official module this one is
batch-first end to end: ``GeometryDecoder`` takes (B, P, 3) points for B different token sets at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VAEConfig


class FourierEmbedder(nn.Module):
    """(..., 3) points -> (..., 3 * (2F + 1)) float32 as [x | sin(f x) | cos(f x)], f = 2^0 .. 2^(F-1) (times pi).

    Always float32, whatever the model dtype: a grid coordinate rounded to bf16 (8 mantissa bits) moves by up to
    1/256 of its value, 0.3-0.6 voxels at R = 256-384, and the 2^7 frequency multiplies that error by 128. The
    frequencies are made per call rather than kept as a buffer, because ``module.to(dtype)`` would round them.
    """

    def __init__(self, num_freqs: int, include_pi: bool) -> None:
        super().__init__()
        self.num_freqs = num_freqs
        self.include_pi = include_pi

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        frequencies = 2.0 ** torch.arange(self.num_freqs, dtype=torch.float32, device=x.device)
        if self.include_pi:
            frequencies *= torch.pi
        embed = (x[..., None].contiguous() * frequencies).view(*x.shape[:-1], -1)
        return torch.cat((x, embed.sin(), embed.cos()), dim=-1)


class MLP(nn.Module):
    def __init__(self, width: int, expand_ratio: int = 4) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, width * expand_ratio)
        self.c_proj = nn.Linear(width * expand_ratio, width)
        self.gelu = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


def _qk_norm(enabled: bool, head_dim: int) -> nn.Module:
    return nn.LayerNorm(head_dim, elementwise_affine=True, eps=1e-6) if enabled else nn.Identity()


class QKVMultiheadAttention(nn.Module):
    def __init__(self, heads: int, width: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.q_norm = _qk_norm(qk_norm, width // heads)
        self.k_norm = _qk_norm(qk_norm, width // heads)

    def forward(self, qkv: Tensor) -> Tensor:
        bs, n_ctx, width = qkv.shape
        # packed per head as [q | k | v]: (B, N, H, 3*D)
        qkv = qkv.view(bs, n_ctx, self.heads, -1)
        q, k, v = torch.split(qkv, width // self.heads // 3, dim=-1)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, N, D)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(bs, n_ctx, -1)


class MultiheadAttention(nn.Module):
    def __init__(self, width: int, heads: int, qkv_bias: bool, qk_norm: bool) -> None:
        super().__init__()
        self.c_qkv = nn.Linear(width, width * 3, bias=qkv_bias)
        self.c_proj = nn.Linear(width, width)
        self.attention = QKVMultiheadAttention(heads, width, qk_norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.attention(self.c_qkv(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, qkv_bias: bool, qk_norm: bool) -> None:
        super().__init__()
        self.attn = MultiheadAttention(width, heads, qkv_bias, qk_norm)
        self.ln_1 = nn.LayerNorm(width, elementwise_affine=True, eps=1e-6)
        self.mlp = MLP(width)
        self.ln_2 = nn.LayerNorm(width, elementwise_affine=True, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, qkv_bias: bool, qk_norm: bool) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, qkv_bias, qk_norm) for _ in range(layers)])

    def forward(self, x: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class KeyValues(NamedTuple):
    """Keys (normalised) and values of a token set, split per head: each (N, H, M, D).

    N is the batch of token sets (B samples) or, after adaptive selection, one set per block of queries.
    """

    keys: Tensor
    values: Tensor

    def take(self, rows: Tensor) -> KeyValues:
        """The sets of ``rows`` (N',) -> (N', H, M, D)."""
        return KeyValues(self.keys.index_select(0, rows), self.values.index_select(0, rows))


class MultiheadCrossAttention(nn.Module):
    """Cross-attention of query points to a token set, with its projections split so that keys and values
    are made once per decode and reused (or selected per block) for every chunk of points."""

    def __init__(self, width: int, heads: int, qkv_bias: bool, qk_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.c_q = nn.Linear(width, width, bias=qkv_bias)
        self.c_kv = nn.Linear(width, width * 2, bias=qkv_bias)
        self.c_proj = nn.Linear(width, width)
        # checkpoint names: attn.attention.{q,k}_norm
        self.attention = _QKNorms(heads, width, qk_norm)

    def key_values(self, data: Tensor) -> KeyValues:
        """(B, M, W) normalised token set -> its keys and values."""
        bs, n_data, width = data.shape
        kv = self.c_kv(data).view(bs, n_data, self.heads, -1)  # packed per head as [k | v]
        k, v = torch.split(kv, width // self.heads, dim=-1)
        return KeyValues(self.attention.k_norm(k).transpose(1, 2), v.transpose(1, 2))

    def queries(self, x: Tensor) -> Tensor:
        """(N, P, W) normalised queries -> (N, H, P, D)."""
        n, p, _ = x.shape
        return self.attention.q_norm(self.c_q(x).view(n, p, self.heads, -1)).transpose(1, 2)

    def attend(self, q: Tensor, kv: KeyValues) -> Tensor:
        """(1 or N, H, P, D) queries against N token sets -> (N, P, W); a single query set (points shared by
        the batch) broadcasts against every set."""
        out = F.scaled_dot_product_attention(q.expand(kv.keys.shape[0], -1, -1, -1), kv.keys, kv.values)
        n, _, p, _ = out.shape
        return self.c_proj(out.transpose(1, 2).reshape(n, p, -1))


class _QKNorms(nn.Module):
    def __init__(self, heads: int, width: int, qk_norm: bool) -> None:
        super().__init__()
        self.q_norm = _qk_norm(qk_norm, width // heads)
        self.k_norm = _qk_norm(qk_norm, width // heads)


class ResidualCrossAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_expand_ratio: int, qkv_bias: bool, qk_norm: bool) -> None:
        super().__init__()
        self.attn = MultiheadCrossAttention(width, heads, qkv_bias, qk_norm)
        self.ln_1 = nn.LayerNorm(width, elementwise_affine=True, eps=1e-6)
        self.ln_2 = nn.LayerNorm(width, elementwise_affine=True, eps=1e-6)
        self.ln_3 = nn.LayerNorm(width, elementwise_affine=True, eps=1e-6)
        self.mlp = MLP(width, expand_ratio=mlp_expand_ratio)

    def key_values(self, data: Tensor) -> KeyValues:
        return self.attn.key_values(self.ln_2(data))


class GeometryDecoder(nn.Module):
    """Occupancy logit of query points given a token set (``geo_decoder`` in the checkpoint)."""

    def __init__(self, cfg: VAEConfig, fourier_embedder: FourierEmbedder) -> None:
        super().__init__()
        width = cfg.geo_width
        self.fourier_embedder = fourier_embedder
        self.downsample_ratio = cfg.geo_decoder_downsample_ratio
        self.enable_ln_post = cfg.geo_decoder_ln_post
        self.query_proj = nn.Linear(cfg.fourier_dim, width)
        if self.downsample_ratio != 1:
            self.latents_proj = nn.Linear(width * self.downsample_ratio, width)
        # The official decoder drops q/k norms together with ln_post (turbo VAEs).
        qk_norm = cfg.qk_norm and self.enable_ln_post
        self.cross_attn_decoder = ResidualCrossAttentionBlock(
            width, cfg.geo_heads, cfg.geo_decoder_mlp_expand_ratio, cfg.qkv_bias, qk_norm
        )
        if self.enable_ln_post:
            self.ln_post = nn.LayerNorm(width)
        self.output_proj = nn.Linear(width, 1)

    def prepare_kv(self, tokens: Tensor) -> KeyValues:
        """(B, M, width) VAE tokens -> keys/values for :meth:`forward`, made once per decode."""
        if self.downsample_ratio != 1:
            tokens = self.latents_proj(tokens)
        return self.cross_attn_decoder.key_values(tokens)

    def forward(self, points: Tensor, kv: KeyValues, select: KeySelector | None = None) -> Tensor:
        """points (1 or N, P, 3), float32 (see :class:`FourierEmbedder`), against N token sets -> logits (N, P).

        A (1, P, 3) query is shared by the batch: its projections run once and broadcast in attention.
        ``select`` picks, from the queries, a smaller token set per row (adaptive KV selection).
        """
        block = self.cross_attn_decoder
        # float32 points -> float32 features; only the features meet the model dtype
        query = self.query_proj(self.fourier_embedder(points).to(kv.keys.dtype))  # (1|N, P, W)
        q = block.attn.queries(block.ln_1(query))
        if select is not None:
            kv = select(q, kv)
        x = query + block.attn.attend(q, kv)  # (N, P, W)
        x = x + block.mlp(block.ln_3(x))
        if self.enable_ln_post:
            x = self.ln_post(x)
        return self.output_proj(x)[..., 0]


# (queries (N, H, P, D), token sets (N, H, M, D)) -> the token sets to attend to, (N, H, K, D)
KeySelector = Callable[[Tensor, KeyValues], KeyValues]


class ShapeVAEDecoder(nn.Module):
    """``post_kl`` + transformer (latents -> tokens) and the geometry decoder."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fourier_embedder = FourierEmbedder(cfg.num_freqs, cfg.include_pi)
        self.post_kl = nn.Linear(cfg.embed_dim, cfg.width)
        self.transformer = Transformer(cfg.width, cfg.num_decoder_layers, cfg.heads, cfg.qkv_bias, cfg.qk_norm)
        self.geo_decoder = GeometryDecoder(cfg, self.fourier_embedder)

    def forward(self, latents: Tensor) -> Tensor:
        """(B, N, embed_dim) sampled latents (already divided by scale_factor) -> (B, N, width) tokens."""
        return self.transformer(self.post_kl(latents))
