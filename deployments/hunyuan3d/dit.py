"""Hunyuan3D-2 flow-matching DiT (Flux-style double- and single-stream blocks).

Parameter names follow the released checkpoints (``model.*`` keys) so weights load without renaming.
The network predicts a velocity; it never sees sigmas or the sampler (that is the pipeline's job).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DiTConfig


def timestep_embedding(t: Tensor, dim: int, max_period: float, time_factor: float = 1000.0) -> Tensor:
    """Sinusoidal embedding of ``time_factor * t`` -> (N, dim) float32 as [cos | sin].

    Quirk kept for checkpoint parity: the official model passes its ``time_factor`` (1000) as
    ``max_period``, so the frequencies span 1..1/1000 rather than 1..1/10000.

    Computed in float32 from ``t`` taken as float32, and returned in float32 (the caller casts it to the model
    dtype): ``1000 t`` in bf16 is off by up to 2 (of 1000) near t = 1, in fp16 by up to 0.25. Give ``t`` in
    float32 too: rounding it before the call loses the same precision.
    """
    t = time_factor * t.float()
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def attention(q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor | None = None) -> Tensor:
    """(B, H, L, D) x3 -> (B, L, H*D); ``key_bias`` (1, 1, 1, L) is added to every query's logits."""
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias)
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


def split_qkv(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B, L, 3*H*D) packed as (K=3, H, D) -> three (B, H, L, D) tensors."""
    b, length, _ = qkv.shape
    qkv = qkv.view(b, length, 3, num_heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, H, L, D)
    return qkv[0], qkv[1], qkv[2]


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=True)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x_dtype = x.dtype
        x = x.float()
        rrms = torch.rsqrt(torch.mean(x**2, dim=-1, keepdim=True) + 1e-6)
        return (x * rrms).to(dtype=x_dtype) * self.scale


class QKNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    """Holds the per-stream projections; the joint attention itself happens in the double block."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)


class Modulation(nn.Module):
    """adaLN: (B, C) conditioning vector -> shift/scale/gate chunks, each (B, 1, C)."""

    def __init__(self, dim: int, double: bool) -> None:
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True)

    def forward(self, vec: Tensor) -> list[Tensor]:
        return list(self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1))


def _mlp(hidden_size: int, mlp_hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(hidden_size, mlp_hidden_dim, bias=True),
        nn.GELU(approximate="tanh"),
        nn.Linear(mlp_hidden_dim, hidden_size, bias=True),
    )


class DoubleStreamBlock(nn.Module):
    """Separate weights for latent ("img") and condition ("txt") tokens, one joint attention."""

    # set per stream in __init__ (setattr), declared here for the type checker
    img_mod: Modulation
    txt_mod: Modulation

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        c = cfg.hidden_size
        self.num_heads = cfg.num_heads
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_mod", Modulation(c, double=True))
            setattr(self, f"{stream}_norm1", nn.LayerNorm(c, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_attn", SelfAttention(c, cfg.num_heads, cfg.qkv_bias))
            setattr(self, f"{stream}_norm2", nn.LayerNorm(c, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_mlp", _mlp(c, cfg.mlp_hidden_dim))

    def _qkv(self, stream: str, x: Tensor, shift: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attn: SelfAttention = getattr(self, f"{stream}_attn")
        modulated = (1 + scale) * getattr(self, f"{stream}_norm1")(x) + shift
        q, k, v = split_qkv(attn.qkv(modulated), self.num_heads)
        q, k = attn.norm(q, k, v)
        return q, k, v

    def _residual(self, stream: str, x: Tensor, attn_out: Tensor, mods: list[Tensor]) -> Tensor:
        _shift1, _scale1, gate1, shift2, scale2, gate2 = mods
        x = x + gate1 * getattr(self, f"{stream}_attn").proj(attn_out)
        mlp_in = (1 + scale2) * getattr(self, f"{stream}_norm2")(x) + shift2
        return x + gate2 * getattr(self, f"{stream}_mlp")(mlp_in)

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, key_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        img_mods = self.img_mod(vec)
        txt_mods = self.txt_mod(vec)
        img_q, img_k, img_v = self._qkv("img", img, img_mods[0], img_mods[1])
        txt_q, txt_k, txt_v = self._qkv("txt", txt, txt_mods[0], txt_mods[1])

        # joint attention over [cond; latent] tokens, no positional encoding
        q = torch.cat((txt_q, img_q), dim=2)
        k = torch.cat((txt_k, img_k), dim=2)
        v = torch.cat((txt_v, img_v), dim=2)
        attn = attention(q, k, v, key_bias)  # (B, T_txt + T_img, C)
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1] :]

        return self._residual("img", img, img_attn, img_mods), self._residual("txt", txt, txt_attn, txt_mods)


class SingleStreamBlock(nn.Module):
    """Parallel attention + MLP on the concatenated token sequence (ViT-22B style)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        c = cfg.hidden_size
        self.hidden_size = c
        self.num_heads = cfg.num_heads
        self.mlp_hidden_dim = cfg.mlp_hidden_dim
        self.linear1 = nn.Linear(c, c * 3 + self.mlp_hidden_dim)  # qkv and mlp_in
        self.linear2 = nn.Linear(c + self.mlp_hidden_dim, c)  # proj and mlp_out
        self.norm = QKNorm(cfg.head_dim)
        self.pre_norm = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(c, double=False)

    def forward(self, x: Tensor, vec: Tensor, key_bias: Tensor | None = None, queries_from: int = 0) -> Tensor:
        """``queries_from``: return only the rows from this index on. The model's last block drops the
        condition rows, so their queries, MLP and output projection are skipped: only their keys and values
        are made (the same numbers, fewer of them)."""
        shift, scale, gate = self.modulation(vec)
        x_mod = (1 + scale) * self.pre_norm(x) + shift
        rows = x_mod[:, queries_from:]
        qkv, mlp = torch.split(self.linear1(rows), [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = split_qkv(qkv, self.num_heads)
        if queries_from:
            c = self.hidden_size
            kv = F.linear(x_mod[:, :queries_from], self.linear1.weight[c : 3 * c], self.linear1.bias[c : 3 * c])
            b, length, _ = kv.shape
            kv = kv.view(b, length, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # (2, B, H, T, D)
            k, v = torch.cat((kv[0], k), dim=2), torch.cat((kv[1], v), dim=2)
        q, k = self.norm(q, k, v)
        out = self.linear2(torch.cat((attention(q, k, v, key_bias), self.mlp_act(mlp)), dim=2))
        return x[:, queries_from:] + gate * out


class LastLayer(nn.Module):
    def __init__(self, hidden_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        x = (1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :]
        return self.linear(x)


class Hunyuan3DDiT(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.hidden_size
        self.latent_in = nn.Linear(cfg.in_channels, c, bias=True)
        self.time_in = MLPEmbedder(in_dim=256, hidden_dim=c)
        self.cond_in = nn.Linear(cfg.context_in_dim, c)
        if cfg.guidance_embed:
            self.guidance_in = MLPEmbedder(in_dim=256, hidden_dim=c)
        self.double_blocks = nn.ModuleList([DoubleStreamBlock(cfg) for _ in range(cfg.depth)])
        self.single_blocks = nn.ModuleList([SingleStreamBlock(cfg) for _ in range(cfg.depth_single_blocks)])
        self.final_layer = LastLayer(c, cfg.in_channels)

    def embed_condition(self, cond: Tensor) -> Tensor:
        """(B, T, C_cond) image tokens -> (B, T, C) model tokens; the same at every step, so a sampler embeds
        once and passes ``cond_embedded=True``."""
        return self.cond_in(cond)

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

        x: (B, N, C_latent) noisy latents; t: (B,) in [0, 1] (0 = noise, 1 = data), best float32;
        cond: (B, T, C_cond) image tokens, or with ``cond_embedded`` their :meth:`embed_condition` (B, T, C);
        guidance: (B,) (float32, like t) for guidance-distilled models; cond_copies: each condition token stands
        for this many identical tokens (see below). Returns (B, N, C_latent).

        Identical condition tokens stay identical through every block (no positional encoding, every op
        per token), and k identical keys with their values weigh in a softmax exactly like one key whose
        logit is raised by ln(k). So CFG's unconditional context (1,370 copies of one token) runs as
        ONE token with ``cond_copies=1370``: the same velocity, a third fewer tokens per pass.
        """
        if not cond_embedded:
            cond = self.embed_condition(cond)
        latent = self.latent_in(x)  # (B, N, C)
        # t and guidance are embedded in float32; only the embeddings meet the model dtype
        vec = self.time_in(timestep_embedding(t, 256, self.cfg.time_factor).to(latent.dtype))  # (B, C)
        if self.cfg.guidance_embed:
            if guidance is None:
                raise ValueError("this guidance-distilled model needs a guidance value")
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256, self.cfg.time_factor).to(latent.dtype))
        key_bias = None
        if cond_copies > 1:
            # keys are [cond; latent] in both kinds of block: + ln(copies) on the condition keys
            key_bias = torch.zeros(1, 1, 1, cond.shape[1] + latent.shape[1], device=latent.device, dtype=latent.dtype)
            key_bias[..., : cond.shape[1]] = math.log(cond_copies)

        for block in self.double_blocks:
            latent, cond = block(latent, cond, vec, key_bias)

        if self.single_blocks:
            tokens = torch.cat((cond, latent), dim=1)  # (B, T + N, C)
            last = len(self.single_blocks) - 1
            for index, block in enumerate(self.single_blocks):
                # the condition rows of the last block are dropped: it computes only the latent rows
                tokens = block(tokens, vec, key_bias, queries_from=cond.shape[1] if index == last else 0)
            latent = tokens
        return self.final_layer(latent, vec)
