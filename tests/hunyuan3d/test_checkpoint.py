from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from deployments.hunyuan3d import CheckpointError, ShapePipeline
from deployments.hunyuan3d.checkpoint import (
    convert_checkpoint,
    find_weight_file,
    iter_checkpoint,
    map_key,
    read_checkpoint,
)

from .conftest import TINY_MODELS

CFG_FOLDER = TINY_MODELS / "hunyuan3d-dit-v2-0"
TURBO_VAE = TINY_MODELS / "hunyuan3d-vae-v2-0-turbo"


def test_map_key_converts_transformers4_dinov2_names():
    key = "conditioner.main_image_encoder.model.encoder.layer.0.attention.attention.query.weight"
    assert map_key(key) == ("conditioner", "model.encoder.layer.0.attention.q_proj.weight")
    key = "conditioner.main_image_encoder.model.encoder.layer.3.attention.output.dense.bias"
    assert map_key(key) == ("conditioner", "model.encoder.layer.3.attention.o_proj.bias")
    assert map_key("vae.post_kl.weight") == ("vae", "post_kl.weight")


def test_map_key_rejects_unknown_prefixes_naming_the_key():
    with pytest.raises(CheckpointError, match=r"'texgen\.foo'"):
        map_key("texgen.foo")


def test_convert_checkpoint_splits_fused_swiglu_gate_first():
    fused = torch.arange(8.0).view(8, 1)
    converted = convert_checkpoint(
        {"conditioner.main_image_encoder.model.encoder.layer.0.mlp.weights_in.weight": fused}
    )
    sd = converted["conditioner"]
    assert torch.equal(sd["model.encoder.layer.0.mlp.gate_proj.weight"], fused[:4])
    assert torch.equal(sd["model.encoder.layer.0.mlp.up_proj.weight"], fused[4:])


def _copy_folder(tmp_path, mutate):
    shutil.copy(CFG_FOLDER / "config.yaml", tmp_path / "config.yaml")
    weights = load_file(str(CFG_FOLDER / "model.fp16.safetensors"))
    mutate(weights)
    save_file(weights, str(tmp_path / "model.fp16.safetensors"))
    return tmp_path


def test_load_strict_reports_a_missing_key(tmp_path):
    folder = _copy_folder(tmp_path, lambda w: w.pop("model.latent_in.weight"))
    with pytest.raises(CheckpointError, match=r"DiT: .*missing latent_in.weight"):
        ShapePipeline.from_pretrained(folder)


def test_load_strict_reports_an_unexpected_key(tmp_path):
    folder = _copy_folder(tmp_path, lambda w: w.__setitem__("vae.extra.weight", torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"unexpected extra.weight"):
        ShapePipeline.from_pretrained(folder)


def test_load_strict_reports_a_shape_mismatch(tmp_path):
    folder = _copy_folder(tmp_path, lambda w: w.__setitem__("model.cond_in.bias", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"cond_in.bias has shape \(3,\)"):
        ShapePipeline.from_pretrained(folder)


def test_find_weight_file_prefers_fp16_safetensors(tmp_path):
    for name in ("model.ckpt", "model.fp16.safetensors"):
        (tmp_path / name).write_bytes(b"")
    assert find_weight_file(tmp_path).name == "model.fp16.safetensors"
    (tmp_path / "model.fp16.safetensors").unlink()
    assert find_weight_file(tmp_path).name == "model.ckpt"


def test_missing_weights_name_the_expected_files(tmp_path):
    shutil.copy(CFG_FOLDER / "config.yaml", tmp_path / "config.yaml")
    with pytest.raises(FileNotFoundError, match=r"model\.fp16\.safetensors"):
        ShapePipeline.from_pretrained(tmp_path)


def test_iter_checkpoint_prefixes_a_vae_folders_bare_keys():
    keys = [key for key, _ in iter_checkpoint(TURBO_VAE / "model.fp16.safetensors", layout="vae")]
    assert keys and all(key.startswith("vae.") for key in keys)
    assert "vae.geo_decoder.latents_proj.weight" in keys  # the turbo decoder's projection (downsample 2)


def test_iter_checkpoint_skips_unwanted_components_but_not_unknown_prefixes(tmp_path):
    keys = {
        key.partition(".")[0] for key, _ in iter_checkpoint(CFG_FOLDER / "model.fp16.safetensors", components=("vae",))
    }
    assert keys == {"vae"}
    path = tmp_path / "model.safetensors"
    save_file({"texgen.foo": torch.zeros(1), "model.bar": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match=r"'texgen\.foo'"):
        convert_checkpoint(iter_checkpoint(path, components=("vae",)))


def test_convert_checkpoint_casts_each_tensor_to_the_target_dtype():
    converted = convert_checkpoint({"vae.post_kl.weight": torch.ones(2, dtype=torch.float16)}, dtype=torch.float32)
    assert converted["vae"]["post_kl.weight"].dtype == torch.float32


def test_ckpt_that_is_not_a_component_dict_names_the_expected_keys(tmp_path):
    torch.save({"state_dict": {"a": torch.zeros(1)}}, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match=r"expected a dict with keys \('model', 'vae', 'conditioner'\)"):
        read_checkpoint(tmp_path / "model.ckpt")


def test_read_checkpoint_reads_safetensors_like_the_safetensors_library(tmp_path):
    path = tmp_path / "model.safetensors"
    tensors = {
        "model.a": torch.randn(3, 4, dtype=torch.bfloat16),
        "model.b": torch.arange(5, dtype=torch.int64),
        "vae.c": torch.randn(2, dtype=torch.float32),
        "conditioner.empty": torch.zeros(0, 3, dtype=torch.float16),
    }
    save_file(tensors, str(path))
    ours = read_checkpoint(path)
    assert sorted(ours) == sorted(tensors)
    for key, value in load_file(str(path)).items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


def test_read_checkpoint_reports_a_truncated_safetensors_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"model.a": torch.zeros(64)}, str(path))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match=r"truncated file \(reading model\.a\)"):
        read_checkpoint(path)
