"""Hunyuan3D-2.1: the HunYuanDiTPlain DiT, its MoE, the 2.1 folder layout, parity with the official hy3dshape.

References were produced by tests/parity/make_tiny_v21.py running the OFFICIAL code (fp32, CPU) on the tiny
checkpoint it wrote with the official classes (see tests/parity/README.md). Tolerances are the issue's:
latents within 1e-4, identical meshes (counts, faces, vertices within float noise), MoE within 1e-5.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from deployments.hunyuan3d import CheckpointError, GenerationParams, ShapePipeline, UnsupportedModelError
from deployments.hunyuan3d.checkpoint import map_key, read_checkpoint
from deployments.hunyuan3d.config import DiTV21Config, ShapeModelConfig, named_config
from deployments.hunyuan3d.dit_v21 import HunYuanDiTPlain, unmix_heads
from deployments.hunyuan3d.moe import MoEBlock
from deployments.hunyuan3d.pipeline import _build_modules

from .conftest import REPO, load_image

TINY_V21 = REPO / "configs" / "models" / "tiny-Hunyuan3D-2.1" / "hunyuan3d-dit-v2-1"
FIXTURES = REPO / "tests" / "fixtures" / "parity"
REFERENCES = json.loads((FIXTURES / "references_v21.json").read_text())
ARRAYS = np.load(FIXTURES / "references_v21.npz")


def _ref(name: str) -> torch.Tensor:
    return torch.from_numpy(ARRAYS[name])


@pytest.fixture(scope="module")
def v21_pipeline() -> ShapePipeline:
    torch.set_num_threads(1)  # the CPU is shared; results do not depend on it
    return ShapePipeline.from_pretrained(TINY_V21)


def _params() -> GenerationParams:
    common = REFERENCES["common"]
    return GenerationParams(
        num_inference_steps=common["num_inference_steps"],
        guidance_scale=common["guidance_scale"],
        octree_resolution=common["octree_resolution"],
        box_v=common["box_v"],
        mc_level=common["mc_level"],
        num_chunks=common["num_chunks"],
        volume_decoder="dense",  # the official default decoder
    )


def _assert_mesh_matches(mesh, key: str, reference: dict) -> None:
    assert (len(mesh.vertices), len(mesh.faces)) == (reference["num_vertices"], reference["num_faces"])
    np.testing.assert_array_equal(np.asarray(mesh.faces), ARRAYS[f"{key}__faces"])
    np.testing.assert_allclose(np.asarray(mesh.vertices), ARRAYS[f"{key}__vertices"], atol=1e-4, rtol=0)


# --- config ----------------------------------------------------------------------------------------------


def test_v21_config_parses_hy3dshape_targets_and_ignores_encoder_params():
    config = ShapeModelConfig.from_yaml(TINY_V21 / "config.yaml")
    assert isinstance(config.dit, DiTV21Config)
    assert (config.dit.depth, config.dit.num_moe_layers, config.dit.num_experts, config.dit.moe_top_k) == (5, 2, 4, 2)
    assert config.vae.num_latents == 128  # pc_size, point_feats, num_encoder_layers accepted and ignored
    assert config.uses_cfg  # HunYuanDiTPlain never reads the pipeline's guidance


def test_v21_config_round_trips_through_to_dict():
    config = named_config("hunyuan3d-dit-v2-1")
    raw = config.to_dict()
    assert raw["model"]["target"].endswith(".HunYuanDiTPlain")
    assert ShapeModelConfig.from_dict(raw, name=config.name) == config


@pytest.mark.parametrize(("key", "value"), [("use_pos_emb", True), ("with_decoupled_ca", True), ("norm_type", "rms")])
def test_v21_config_refuses_unreleased_options_naming_them(key: str, value: object):
    raw = named_config("hunyuan3d-dit-v2-1").to_dict()
    raw["model"]["params"][key] = value
    with pytest.raises(UnsupportedModelError, match=key):
        ShapeModelConfig.from_dict(raw)


def test_v21_config_unknown_param_is_an_error_naming_it():
    raw = named_config("hunyuan3d-dit-v2-1").to_dict()
    raw["model"]["params"]["num_shared_experts"] = 2
    with pytest.raises(ValueError, match="num_shared_experts"):
        ShapeModelConfig.from_dict(raw)


# --- loading ---------------------------------------------------------------------------------------------


def test_map_key_drops_vae_encoder_keys_by_name_only():
    assert map_key("vae.encoder.cross_attn.attn.c_q.weight") is None
    assert map_key("vae.pre_kl.weight") is None
    assert map_key("vae.post_kl.weight") == ("vae", "post_kl.weight")
    assert map_key("model.encoder.weight") == ("model", "encoder.weight")  # the rule is the VAE's only


def test_v21_released_layout_keeps_vae_encoder_and_loads_strictly(v21_pipeline):
    flat = read_checkpoint(TINY_V21 / "model.fp16.ckpt")
    encoder = [k for k in flat if k.startswith(("vae.encoder.", "vae.pre_kl."))]
    assert encoder  # as released: the whole ShapeVAE
    loaded = {f"vae.{k}" for k in v21_pipeline.vae.state_dict()}
    assert loaded == {k for k in flat if k.startswith("vae.")} - set(encoder)


def test_v21_stray_vae_key_outside_the_encoder_rule_is_an_error(tmp_path):
    raw = torch.load(TINY_V21 / "model.fp16.ckpt", weights_only=True)
    raw["vae"]["geo_decoder.extra.weight"] = torch.zeros(1)
    (tmp_path / "config.yaml").write_bytes((TINY_V21 / "config.yaml").read_bytes())
    torch.save(raw, tmp_path / "model.fp16.ckpt")
    with pytest.raises(CheckpointError, match=r"geo_decoder\.extra\.weight"):
        ShapePipeline.from_pretrained(tmp_path)


def test_unmix_heads_makes_the_plain_split_equal_the_official_interleaved_one():
    """Upstream: cat([q, k, v], -1).view(.., H, 3D) split per head. Ours after unmixing: split per projection."""
    g = torch.Generator().manual_seed(0)
    heads, head_dim, tokens = 4, 8, 5
    dim = heads * head_dim
    x = torch.randn(tokens, dim, generator=g)
    weights = [torch.randn(dim, dim, generator=g) for _ in range(3)]
    mixed = torch.cat([x @ w.T for w in weights], dim=-1).view(tokens, heads, 3 * head_dim)
    official = torch.split(mixed, head_dim, dim=-1)  # 3 x (tokens, H, D)
    ours = unmix_heads(torch.cat(weights, dim=0), 3, heads)
    for theirs, weight in zip(official, ours, strict=True):
        torch.testing.assert_close((x @ weight.T).view(tokens, heads, head_dim), theirs, atol=1e-5, rtol=0)
    # it is a real permutation: the query weight changes unless H == 1
    assert not torch.equal(ours[0], weights[0])


# --- the network -----------------------------------------------------------------------------------------


def test_v21_dit_forward_matches_official(v21_pipeline):
    with torch.inference_mode():
        out = v21_pipeline.dit(_ref("dit__x"), _ref("dit__t"), _ref("dit__cond"))
    torch.testing.assert_close(out, _ref("dit__out"), atol=1e-5, rtol=0)


def test_v21_uncond_one_token_equals_official_full_zero_context(v21_pipeline):
    """The official CFG negative is T zero tokens; the pipeline runs it as one (cross-attention only)."""
    tokens = REFERENCES["dit"]["uncond_tokens"]
    one = v21_pipeline.conditioner.unconditional(2)[:, :1]
    with torch.inference_mode():
        out = v21_pipeline.dit(_ref("dit__x"), _ref("dit__t"), one, cond_copies=tokens, cond_embedded=True)
    torch.testing.assert_close(out, _ref("dit__out_uncond"), atol=1e-5, rtol=0)


def test_v21_identical_context_tokens_equal_one_token(v21_pipeline):
    """Not only for zeros: T copies of any token give the same velocity as that token alone."""
    g = torch.Generator().manual_seed(3)
    token = torch.randn(2, 1, 48, generator=g)
    x, t = _ref("dit__x"), _ref("dit__t")
    with torch.inference_mode():
        many = v21_pipeline.dit(x, t, token.expand(2, 257, 48))
        one = v21_pipeline.dit(x, t, token, cond_copies=257)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", ["dense", "grouped"])
def test_v21_moe_matches_official(v21_pipeline, impl):
    block: MoEBlock = v21_pipeline.dit.blocks[REFERENCES["dit"]["moe_layer"]].moe
    assert min(REFERENCES["dit"]["moe_expert_counts"]) > 0  # the reference routes to every expert
    block.impl = impl
    try:
        with torch.inference_mode():
            out = block(_ref("moe__in"))
    finally:
        block.impl = "auto"
    torch.testing.assert_close(out, _ref("moe__out"), atol=1e-5, rtol=0)


def _moe(impl: str, dtype: torch.dtype) -> tuple[MoEBlock, torch.Tensor]:
    torch.manual_seed(0)
    block = MoEBlock(dim=64, inner_dim=128, num_experts=4, top_k=2, impl=impl).to(dtype)  # type: ignore[arg-type]
    return block, torch.randn(2, 33, 64, dtype=dtype)


@pytest.mark.parametrize(("impl", "dtype"), [("dense", torch.float32), ("grouped", torch.bfloat16)])
def test_moe_runs_on_meta_tensors_so_it_never_syncs_the_host(impl, dtype):
    """Meta tensors have no data: anything that reads values on the host (.item(), .tolist(), nonzero,
    boolean masks, bincount, .cpu()) raises on them, so a forward that runs on meta never syncs."""
    with torch.device("meta"):
        block, x = _moe(impl, dtype)
        out = block(x)
    assert out.shape == x.shape and out.device.type == "meta"


def test_meta_tensors_catch_a_host_sync_like_the_official_moe_infer():
    """The check above can fail: per-expert counts copied to the host (as upstream's moe_infer) raise on meta."""
    experts = torch.empty(8, dtype=torch.int64, device="meta")
    with pytest.raises((NotImplementedError, RuntimeError)):
        experts.bincount().cpu().numpy().cumsum(0)


def test_v21_whole_dit_runs_on_meta_tensors():
    """The DiT step as CUDA-graph capture needs it: no host sync anywhere in the forward, MoE layers included."""
    config = ShapeModelConfig.from_yaml(TINY_V21 / "config.yaml")
    assert isinstance(config.dit, DiTV21Config)
    with torch.device("meta"):
        dit = HunYuanDiTPlain(config.dit).eval()
        out = dit(torch.empty(2, 128, 8), torch.empty(2), torch.empty(2, 1370, 48))
    assert out.shape == (2, 128, 8)


@pytest.mark.parametrize(("impl", "dtype"), [("dense", torch.float32), ("grouped", torch.bfloat16)])
def test_moe_compiles_as_one_graph(impl, dtype):
    """torch.compile (compile_dit) takes the MoE without a graph break and gives the eager result."""
    torch._dynamo.reset()
    block, x = _moe(impl, dtype)
    with torch.no_grad():
        expected = block(x)
        compiled = torch.compile(block, fullgraph=True, backend="eager")(x)
    torch.testing.assert_close(compiled, expected, atol=0, rtol=0)


def test_moe_grouped_equals_dense():
    block, x = _moe("dense", torch.float32)
    with torch.no_grad():
        dense = block(x)
        block.impl = "grouped"
        grouped = block(x)
    torch.testing.assert_close(grouped, dense, atol=1e-5, rtol=0)


def test_v21_whole_dit_compiles_as_one_graph(v21_pipeline):
    """compile_dit on the 2.1 DiT: one graph (fullgraph), the eager result."""
    torch._dynamo.reset()
    x, t, cond = _ref("dit__x"), _ref("dit__t"), _ref("dit__cond")
    with torch.no_grad():
        out = torch.compile(v21_pipeline.dit, fullgraph=True, backend="eager")(x, t, cond, None, cond_embedded=True)
    torch.testing.assert_close(out, _ref("dit__out"), atol=1e-5, rtol=0)


def test_v21_real_size_builds_on_meta_with_published_parameter_count():
    config = named_config("hunyuan3d-dit-v2-1")
    with torch.device("meta"):
        dit, vae, conditioner = _build_modules(config)
    assert isinstance(dit, HunYuanDiTPlain)
    count = sum(p.numel() for p in dit.parameters())
    assert count == 3_050_758_720  # = the official HunYuanDiTPlain built from the released params
    decoder = sum(p.numel() for p in vae.parameters())
    # published: "Hunyuan3D-Shape-v2-1 3.3B" = the DiT (3.05B) with the VAE decoder that makes its shapes
    assert round((count + decoder) / 1e9, 1) == 3.3
    moe_layers = [i for i, block in enumerate(dit.blocks) if block.moe is not None]
    assert moe_layers == list(range(15, 21))
    assert sum(p.numel() for p in conditioner.parameters()) == pytest.approx(304e6, rel=0.01)  # DINOv2-L


# --- the pipeline ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(REFERENCES["single"]))
def test_v21_latents_and_mesh_match_official(v21_pipeline, key):
    case = REFERENCES["single"][key]
    params = _params()
    latents = v21_pipeline.sample_latents([load_image(case["image"])], [case["seed"]], params)
    torch.testing.assert_close(latents, _ref(f"{key}__latents"), atol=1e-4, rtol=0)
    mesh = v21_pipeline.extract_surfaces(v21_pipeline.decode_volumes(latents, params), params)[0]
    _assert_mesh_matches(mesh, key, case["mesh"])


def test_v21_batch_matches_official_batch_and_our_sequential_runs(v21_pipeline):
    batched = REFERENCES["batched"]
    params = _params()
    images = [load_image(name) for name in batched["images"]]
    latents = v21_pipeline.sample_latents(images, batched["seeds"], params)
    torch.testing.assert_close(latents, _ref("batched__latents"), atol=1e-4, rtol=0)
    for index, (image, seed) in enumerate(zip(images, batched["seeds"], strict=True)):
        alone = v21_pipeline.sample_latents([image], [seed], params)
        torch.testing.assert_close(latents[index : index + 1], alone, atol=1e-5, rtol=0)
    meshes = v21_pipeline.extract_surfaces(v21_pipeline.decode_volumes(latents, params), params)
    for index, mesh in enumerate(meshes):
        _assert_mesh_matches(mesh, f"batched_{index}", batched["meshes"][index])


def test_v21_time_token_uses_unscaled_flow_time():
    """2.1 embeds t in [0, 1] directly (2.0 embeds 1000 t), [sin | cos] with a first frequency of 1."""
    from deployments.hunyuan3d.dit_v21 import time_token_embedding

    embedding = time_token_embedding(torch.tensor([0.5]), 8)
    assert embedding[0, 0].item() == pytest.approx(math.sin(0.5))
    assert embedding[0, 4].item() == pytest.approx(math.cos(0.5))


def test_v21_from_config_builds_random_weights_that_sample():
    """Random-weight builds (benchmarks without weights) work for 2.1 too, with every expert initialised."""
    pipeline = ShapePipeline.from_config(TINY_V21, seed=1)
    experts = pipeline.dit.blocks[-1].moe.experts
    assert experts.in_weight.std() > 0 and not torch.equal(experts.in_weight[0], experts.in_weight[1])
    params = GenerationParams(num_inference_steps=2, guidance_scale=5.0)
    latents = pipeline.sample_latents([load_image("object_rgba.png")], [0], params)
    assert latents.shape == (1, 128, 8) and torch.isfinite(latents).all()
