"""The geometry decoder bound to a batch: ragged point sets, Morton blocks and adaptive KV selection."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from deployments.hunyuan3d.config import VAEConfig
from deployments.hunyuan3d.point_decoding import (
    BatchGeometryDecoder,
    _pad_into_blocks,
    adaptive_kv_count,
    morton_codes,
)
from deployments.hunyuan3d.vae import ShapeVAEDecoder

TINY_VAE = VAEConfig(
    num_latents=128, embed_dim=8, width=32, heads=2, num_decoder_layers=1, include_pi=False, qk_norm=True
)
# the turbo decoders' shape: a narrower geometry decoder (downsampled tokens), a thin MLP, no ln_post / qk norms
TURBO_VAE = replace(TINY_VAE, geo_decoder_downsample_ratio=2, geo_decoder_mlp_expand_ratio=1, geo_decoder_ln_post=False)


def bound_decoder(cfg: VAEConfig, batch: int, kv_count: int | None = None, seed: int = 0) -> BatchGeometryDecoder:
    torch.manual_seed(seed)
    vae = ShapeVAEDecoder(cfg).eval()
    with torch.inference_mode():
        tokens = vae(torch.randn(batch, cfg.num_latents, cfg.embed_dim))
        kv = vae.geo_decoder.prepare_kv(tokens)
    return BatchGeometryDecoder(vae.geo_decoder, kv, torch.float32, 3000, kv_count)


def test_official_top_k_rule():
    assert adaptive_kv_count(3072) == 1024
    assert adaptive_kv_count(512) == 256
    assert adaptive_kv_count(128) == 42
    assert adaptive_kv_count(2) == 1


def test_morton_codes_keep_space_local():
    lattice = torch.stack(torch.meshgrid(*[torch.arange(4)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)
    points = lattice.float() * 0.25 - 1.0
    codes = morton_codes(points)
    assert codes.unique().numel() == 64  # distinct points, distinct codes
    # the 8 points of each 2x2x2 octant come out consecutive along the curve
    order = torch.argsort(codes)
    octant = (lattice[order] // 2) @ torch.tensor([4, 2, 1])
    assert all(octant[i : i + 8].unique().numel() == 1 for i in range(0, 64, 8))


def test_padding_into_blocks_keeps_every_point_and_pads_with_the_samples_own_last_point():
    points = torch.arange(30, dtype=torch.float32)[:, None].expand(-1, 3).contiguous()
    counts = torch.tensor([7, 0, 23])
    blocks, owner, rows = _pad_into_blocks(points, counts, block=8)
    assert owner.tolist() == [0, 2, 2, 2]
    assert torch.equal(blocks.view(-1, 3)[rows], points)
    assert blocks[0, 7, 0].item() == 6.0  # sample 0's last point fills its block
    assert blocks[3, 7, 0].item() == 29.0


@pytest.mark.parametrize("cfg", [TINY_VAE, TURBO_VAE], ids=["standard", "turbo"])
def test_ragged_decoding_equals_the_shared_grid_and_selecting_every_token_is_exact(cfg):
    exact = bound_decoder(cfg, batch=3)
    points = torch.rand(5000, 3) * 2 - 1
    owner = torch.arange(3).repeat_interleave(5000)
    with torch.inference_mode():
        shared = exact.shared(points)  # (3, P)
        ragged = exact.ragged(points.repeat(3, 1), owner).view(3, -1)
        torch.testing.assert_close(ragged, shared, atol=1e-5, rtol=0)
        everything = bound_decoder(cfg, batch=3, kv_count=cfg.num_latents - 1)
        everything.kv_count = cfg.num_latents  # force the selection path with nothing left out
        torch.testing.assert_close(everything.shared(points), shared, atol=1e-5, rtol=0)


def test_adaptive_selection_is_independent_of_batch_mates():
    points = torch.rand(20000, 3) * 2 - 1
    exact = bound_decoder(TINY_VAE, batch=2)
    adaptive = bound_decoder(TINY_VAE, batch=2, kv_count=adaptive_kv_count(128))
    with torch.inference_mode():
        full = exact.shared(points)
        approx = adaptive.shared(points)
        # random weights attend diffusely, so leaving out two thirds of the tokens shows (how close it stays on
        # a decoder with structure is tested on the tiny checkpoint in test_pipeline.py)
        assert (full - approx).abs().mean() > 1e-3
        owner = torch.zeros(20000, dtype=torch.long)
        alone = BatchGeometryDecoder(
            adaptive.decoder,
            type(adaptive.kv)(adaptive.kv.keys[1:], adaptive.kv.values[1:]),
            torch.float32,
            3000,
            adaptive.kv_count,
        ).ragged(points, owner)
    torch.testing.assert_close(alone, approx[1], atol=1e-5, rtol=0)
