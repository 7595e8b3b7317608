"""Every Hunyuan3D-2.0 folder layout loads: DiT folders (safetensors fp16/fp32, model.ckpt), VAE-only folders
(bare config, unprefixed keys), the turbo VAE pairing, the ``vae`` override, and meta-device loading equal to
the eager path bit for bit.

The turbo references were produced by tests/parity/make_tiny_vae_folders.py with the OFFICIAL pipeline and
its own ``enable_flashvdm()`` VAE swap (see tests/parity/README.md).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from deployments.generator_config import GeneratorConfig
from deployments.hunyuan3d import CheckpointError, GenerationParams, ShapePipeline
from deployments.hunyuan3d.config import ShapeModelConfig, VAEConfig
from deployments.hunyuan3d.vae_folders import turbo_vae_sibling
from deployments.shape_generator import load_pipeline

from .conftest import REPO, TINY_MODELS, load_image

CFG_FOLDER = TINY_MODELS / "hunyuan3d-dit-v2-0"
FAST_FOLDER = TINY_MODELS / "hunyuan3d-dit-v2-0-fast"
TURBO_FOLDER = TINY_MODELS / "hunyuan3d-dit-v2-0-turbo"
TURBO_VAE = TINY_MODELS / "hunyuan3d-vae-v2-0-turbo"
FIXTURES = REPO / "tests" / "fixtures" / "parity"
TURBO_REFERENCE = json.loads((FIXTURES / "turbo_vae.json").read_text())
TURBO_ARRAYS = np.load(FIXTURES / "turbo_vae.npz")
FAST = GenerationParams(num_inference_steps=3, octree_resolution=16, volume_decoder="dense")


def _state(pipeline: ShapePipeline) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (persistent or not) of the three networks."""
    out = {}
    for prefix, module in (("dit", pipeline.dit), ("vae", pipeline.vae), ("conditioner", pipeline.conditioner)):
        for name, tensor in (*module.named_parameters(), *module.named_buffers()):
            out[f"{prefix}.{name}"] = tensor
    return out


def _assert_same_weights(a: ShapePipeline, b: ShapePipeline) -> None:
    sa, sb = _state(a), _state(b)
    assert sorted(sa) == sorted(sb)
    for key, tensor in sa.items():
        assert tensor.dtype == sb[key].dtype and tensor.device == sb[key].device, key
        assert torch.equal(tensor, sb[key]), key


def _mesh(pipeline: ShapePipeline):
    return pipeline.generate_shape_batch([load_image("object_rgba.png")], [0], FAST)[0]


def _copy_config(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.yaml", dst / "config.yaml")
    return dst


def _fp32(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(str(path)).items()}


# --- meta-device init ------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", [CFG_FOLDER, FAST_FOLDER, TURBO_FOLDER], ids=lambda p: p.name)
def test_from_pretrained_meta_init_equals_eager_bit_for_bit(folder):
    meta = ShapePipeline.from_pretrained(folder)
    eager = ShapePipeline.from_pretrained(folder, init="eager")
    _assert_same_weights(meta, eager)
    # the non-persistent buffers were rebuilt by the modules themselves, not left on meta
    assert meta.conditioner.mean.device.type == "cpu"
    assert torch.equal(meta.conditioner.std, eager.conditioner.std)
    m1, m2 = _mesh(meta), _mesh(eager)
    np.testing.assert_array_equal(m1.vertices, m2.vertices)
    np.testing.assert_array_equal(m1.faces, m2.faces)


def test_from_pretrained_meta_init_materialises_in_the_target_dtype():
    meta = ShapePipeline.from_pretrained(CFG_FOLDER, dtype=torch.bfloat16)
    eager = ShapePipeline.from_pretrained(CFG_FOLDER, dtype=torch.bfloat16, init="eager")
    assert {p.dtype for p in meta.dit.parameters()} == {torch.bfloat16}
    _assert_same_weights(meta, eager)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_from_pretrained_meta_init_on_cuda_equals_eager():
    meta = ShapePipeline.from_pretrained(TURBO_FOLDER, device="cuda")
    eager = ShapePipeline.from_pretrained(TURBO_FOLDER, device="cuda", init="eager")
    assert {t.device.type for t in _state(meta).values()} == {"cuda"}
    _assert_same_weights(meta, eager)
    np.testing.assert_array_equal(_mesh(meta).faces, _mesh(eager).faces)


def test_from_config_random_weights_still_builds_real_tensors():
    pipeline = ShapePipeline.from_config(CFG_FOLDER / "config.yaml", seed=3)
    assert all(t.device.type == "cpu" for t in _state(pipeline).values())
    assert pipeline.conditioner.mean.device.type == "cpu"


# --- DiT folder weight files ------------------------------------------------------------------------------


def test_from_pretrained_loads_an_fp32_safetensors_folder(tmp_path, tiny_cfg_pipeline):
    folder = _copy_config(CFG_FOLDER, tmp_path / "hunyuan3d-dit-v2-0")
    save_file(_fp32(CFG_FOLDER / "model.fp16.safetensors"), str(folder / "model.safetensors"))
    _assert_same_weights(ShapePipeline.from_pretrained(folder), tiny_cfg_pipeline)


def test_from_pretrained_loads_an_fp32_ckpt_ignoring_extra_top_level_keys(tmp_path, caplog, tiny_cfg_pipeline):
    folder = _copy_config(CFG_FOLDER, tmp_path / "hunyuan3d-dit-v2-0")
    ckpt: dict = {"model": {}, "vae": {}, "conditioner": {}}
    for key, value in _fp32(CFG_FOLDER / "model.fp16.safetensors").items():
        component, _, name = key.partition(".")
        ckpt[component][name] = value
    ckpt.update(global_step=1200, optimizer={"lr": torch.tensor(1e-4)})  # training state, as a .ckpt may hold
    torch.save(ckpt, folder / "model.ckpt")
    with caplog.at_level(logging.INFO, logger="deployments.hunyuan3d.checkpoint"):
        pipeline = ShapePipeline.from_pretrained(folder)
    ignored = [r.getMessage() for r in caplog.records if "ignoring top-level" in r.getMessage()]
    assert len(ignored) == 1 and "'global_step', 'optimizer'" in ignored[0]
    _assert_same_weights(pipeline, tiny_cfg_pipeline)


def test_ckpt_component_keys_stay_strict(tmp_path):
    folder = _copy_config(CFG_FOLDER, tmp_path / "hunyuan3d-dit-v2-0")
    ckpt: dict = {"model": {}, "vae": {}, "conditioner": {}}
    for key, value in load_file(str(CFG_FOLDER / "model.fp16.safetensors")).items():
        component, _, name = key.partition(".")
        ckpt[component][name] = value
    ckpt["vae"]["decoder_extra.weight"] = torch.zeros(2)
    torch.save(ckpt, folder / "model.fp16.ckpt")
    with pytest.raises(CheckpointError, match=r"VAE: .*unexpected decoder_extra\.weight"):
        ShapePipeline.from_pretrained(folder)


# --- VAE-only folders -------------------------------------------------------------------------------------


def test_vae_config_from_yaml_reads_a_bare_vae_folder_config():
    config = VAEConfig.from_yaml(TURBO_VAE / "config.yaml")
    assert (config.num_latents, config.embed_dim) == (128, 8)
    assert (config.geo_decoder_downsample_ratio, config.geo_decoder_mlp_expand_ratio) == (2, 1)
    assert config.geo_decoder_ln_post is False


def test_config_readers_name_the_other_folder_kind():
    with pytest.raises(ValueError, match="not a VAE folder's config"):
        VAEConfig.from_yaml(CFG_FOLDER / "config.yaml")
    with pytest.raises(ValueError, match="VAE folder's config"):
        ShapeModelConfig.from_yaml(TURBO_VAE / "config.yaml")
    with pytest.raises(ValueError, match=r"`vae=`"):
        ShapePipeline.from_pretrained(TURBO_VAE)


def _vae_folder(tmp_path: Path, weights: dict[str, torch.Tensor], file: str) -> Path:
    folder = _copy_config(TURBO_VAE, tmp_path / "hunyuan3d-vae-v2-0-turbo")
    if file.endswith(".safetensors"):
        save_file(weights, str(folder / file))
    else:
        torch.save(weights, folder / file)
    return folder


@pytest.mark.parametrize("file", ["model.safetensors", "model.ckpt"])
def test_vae_override_loads_an_fp32_vae_folder(tmp_path, file):
    reference = ShapePipeline.from_pretrained(CFG_FOLDER, vae=TURBO_VAE)
    folder = _vae_folder(tmp_path, _fp32(TURBO_VAE / "model.fp16.safetensors"), file)
    pipeline = ShapePipeline.from_pretrained(CFG_FOLDER, vae=folder)
    _assert_same_weights(pipeline, reference)


def test_vae_override_replaces_the_model_folders_vae(tiny_cfg_pipeline):
    pipeline = ShapePipeline.from_pretrained(CFG_FOLDER, vae=TURBO_VAE)
    assert pipeline.config.vae == VAEConfig.from_yaml(TURBO_VAE / "config.yaml")
    weights = load_file(str(TURBO_VAE / "model.fp16.safetensors"))
    assert torch.equal(pipeline.vae.geo_decoder.output_proj.weight, weights["geo_decoder.output_proj.weight"].float())
    assert torch.equal(pipeline.dit.latent_in.weight, tiny_cfg_pipeline.dit.latent_in.weight)
    assert len(_mesh(pipeline).faces) > 100


def test_vae_override_may_be_another_model_folder(tiny_fast_pipeline):
    pipeline = ShapePipeline.from_pretrained(CFG_FOLDER, vae=FAST_FOLDER)
    for name, tensor in tiny_fast_pipeline.vae.state_dict().items():
        assert torch.equal(pipeline.vae.state_dict()[name], tensor), name


def test_vae_override_with_another_latent_shape_is_a_clear_error(tmp_path):
    folder = _copy_config(TURBO_VAE, tmp_path / "hunyuan3d-vae-v2-mini-turbo")
    raw = yaml.safe_load((folder / "config.yaml").read_text())
    raw["params"]["num_latents"] = 64
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(TURBO_VAE / "model.fp16.safetensors", folder / "model.fp16.safetensors")
    with pytest.raises(CheckpointError, match=r"\(64, 8\) but hunyuan3d-dit-v2-0 samples \(128, 8\)"):
        ShapePipeline.from_pretrained(CFG_FOLDER, vae=folder)


def test_vae_folder_keys_stay_strict_and_unprefixed(tmp_path):
    weights = load_file(str(TURBO_VAE / "model.fp16.safetensors"))
    prefixed = {f"vae.{k}": v for k, v in weights.items()}
    folder = _vae_folder(tmp_path, prefixed, "model.fp16.safetensors")
    with pytest.raises(CheckpointError, match=r"hunyuan3d-vae-v2-0-turbo: VAE: .*unexpected vae\.geo_decoder\."):
        ShapePipeline.from_pretrained(CFG_FOLDER, vae=folder)


# --- turbo pairing ----------------------------------------------------------------------------------------


def test_turbo_dit_folder_pairs_with_its_sibling_turbo_vae(caplog):
    assert turbo_vae_sibling(TURBO_FOLDER) == TURBO_VAE
    assert turbo_vae_sibling(CFG_FOLDER) is None
    with caplog.at_level(logging.INFO, logger="deployments.hunyuan3d.vae_folders"):
        pipeline = ShapePipeline.from_pretrained(TURBO_FOLDER)
    assert pipeline.config.vae.geo_decoder_ln_post is False
    assert any("hunyuan3d-vae-v2-0-turbo (turbo VAE next to" in r.getMessage() for r in caplog.records)


def test_turbo_dit_folder_without_a_sibling_uses_its_own_vae(tmp_path, caplog):
    folder = tmp_path / "hunyuan3d-dit-v2-0-turbo"
    shutil.copytree(TURBO_FOLDER, folder)
    with caplog.at_level(logging.INFO, logger="deployments.hunyuan3d.vae_folders"):
        pipeline = ShapePipeline.from_pretrained(folder)
    assert pipeline.config.vae == ShapeModelConfig.from_yaml(folder / "config.yaml").vae
    assert any("the model folder's own" in r.getMessage() for r in caplog.records)


def test_turbo_pairing_matches_the_official_flashvdm_vae_swap():
    """Official: from_pretrained(hunyuan3d-dit-v2-0-turbo) + enable_flashvdm() (dense decoder, fp32)."""
    case = TURBO_REFERENCE["case"]
    pipeline = ShapePipeline.from_pretrained(TURBO_FOLDER)
    params = GenerationParams(
        num_inference_steps=case["num_inference_steps"],
        guidance_scale=case["guidance_scale"],
        octree_resolution=case["octree_resolution"],
        box_v=case["box_v"],
        mc_level=case["mc_level"],
        num_chunks=case["num_chunks"],
        volume_decoder="dense",
    )
    latents = pipeline.sample_latents([load_image(case["image"])], [case["seed"]], params)
    torch.testing.assert_close(latents, torch.from_numpy(TURBO_ARRAYS["latents"]), atol=1e-4, rtol=0)
    # decode the official latents, so the VAE comparison does not depend on the sampler
    fixed = torch.from_numpy(TURBO_ARRAYS["latents"])
    grid = pipeline.decode_volumes(fixed, params)[0].dense()
    torch.testing.assert_close(grid, torch.from_numpy(TURBO_ARRAYS["grid_logits"]), atol=1e-4, rtol=1e-5)
    mesh = pipeline.extract_surfaces(pipeline.decode_volumes(fixed, params), params)[0]
    np.testing.assert_array_equal(mesh.faces, TURBO_ARRAYS["mesh_faces"])
    np.testing.assert_allclose(mesh.vertices, TURBO_ARRAYS["mesh_vertices"], atol=1e-5, rtol=0)


# --- the serve config ---------------------------------------------------------------------------------------


def test_generator_config_vae_reaches_the_pipeline():
    config = GeneratorConfig(
        model="configs/models/tiny-Hunyuan3D-2/hunyuan3d-dit-v2-0",
        vae="configs/models/tiny-Hunyuan3D-2/hunyuan3d-vae-v2-0-turbo",
        device="cpu",
    )
    assert load_pipeline(config).config.vae.geo_decoder_ln_post is False


def test_generator_config_rejects_vae_with_random_weights():
    with pytest.raises(ValidationError, match="random_weights"):
        GeneratorConfig(random_weights=True, vae="configs/models/tiny-Hunyuan3D-2/hunyuan3d-vae-v2-0-turbo")


# --- VAE folders that keep the point-cloud encoder (hunyuan3d-vae-v2-1, -v2-*-withencoder) -----------------

V21_FOLDER = REPO / "configs" / "models" / "tiny-Hunyuan3D-2.1" / "hunyuan3d-dit-v2-1"


def _v21_vae_folder(root: Path) -> Path:
    """A `hunyuan3d-vae-v2-1` folder in the released VAE layout from the tiny 2.1 checkpoint (made with the
    official classes): bare config WITH the encoder params, unprefixed keys WITH the encoder's tensors."""
    raw = yaml.safe_load((V21_FOLDER / "config.yaml").read_text())
    checkpoint = torch.load(V21_FOLDER / "model.fp16.ckpt", map_location="cpu", weights_only=True)
    folder = root / "hunyuan3d-vae-v2-1"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(raw["vae"]))
    save_file(
        {key: value.contiguous() for key, value in checkpoint["vae"].items()}, str(folder / "model.fp16.safetensors")
    )
    return folder


def test_a_v21_vae_folder_with_its_encoder_loads_as_the_vae_and_drops_the_encoder(tmp_path, caplog):
    folder = _v21_vae_folder(tmp_path)
    assert "pc_size" in (folder / "config.yaml").read_text()
    assert any(key.startswith("encoder.") for key in load_file(folder / "model.fp16.safetensors"))
    with caplog.at_level(logging.INFO, logger="deployments.hunyuan3d.checkpoint"):
        overridden = ShapePipeline.from_pretrained(V21_FOLDER, vae=folder)
    assert "VAE encoder tensors" in caplog.text
    own = ShapePipeline.from_pretrained(V21_FOLDER)
    assert overridden.vae.state_dict().keys() == own.vae.state_dict().keys()
    for key, value in own.vae.state_dict().items():
        assert torch.equal(overridden.vae.state_dict()[key], value), key


def test_a_withencoder_v20_vae_folder_loads_with_its_encoder_keys_dropped(tmp_path):
    """`hunyuan3d-vae-v2-mini-withencoder` & co.: the decoder keys of a 2.0 VAE plus encoder tensors."""
    weights = {
        key.removeprefix("vae."): value
        for key, value in load_file(CFG_FOLDER / "model.fp16.safetensors").items()
        if key.startswith("vae.")
    }
    encoder = torch.load(V21_FOLDER / "model.fp16.ckpt", map_location="cpu", weights_only=True)["vae"]
    weights.update({key: value for key, value in encoder.items() if key.startswith(("encoder.", "pre_kl."))})
    raw = yaml.safe_load((CFG_FOLDER / "config.yaml").read_text())["vae"]
    raw["params"].update({"num_encoder_layers": 1, "pc_size": 512, "pc_sharpedge_size": 0, "point_feats": 4})
    folder = tmp_path / "hunyuan3d-vae-v2-0-withencoder"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    save_file({key: value.contiguous() for key, value in weights.items()}, str(folder / "model.fp16.safetensors"))
    overridden = ShapePipeline.from_pretrained(CFG_FOLDER, vae=folder)
    own = ShapePipeline.from_pretrained(CFG_FOLDER)
    for key, value in own.vae.state_dict().items():
        assert torch.equal(overridden.vae.state_dict()[key], value), key
