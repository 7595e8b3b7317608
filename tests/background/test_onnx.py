from __future__ import annotations

import numpy as np
import onnx
import pytest
from PIL import Image
from pydantic import ValidationError

from deployments.background import BackgroundConfig, ClassicalRemover, OnnxRemover, _providers, make_remover
from tests.background import (
    STUDIO_PHOTOS,
    TINY_MODEL,
    TINY_MODEL_RELATIVE,
    iou,
    load_photo,
    tiny_model_script,
    true_mask,
)


def onnx_remover(model: str | object = TINY_MODEL_RELATIVE, **fields: object) -> OnnxRemover:
    return OnnxRemover(BackgroundConfig(remover="onnx", onnx_model=str(model), **fields))


def write_variant(tmp_path, name: str, **kwargs: object) -> str:
    path = tmp_path / name
    onnx.save(tiny_model_script().build_model(**kwargs), path)
    return str(path)


def test_onnx_committed_tiny_model_is_what_the_script_builds():
    assert TINY_MODEL.read_bytes() == tiny_model_script().build_model().SerializeToString()
    assert TINY_MODEL.stat().st_size < 10_000


def test_onnx_reads_u2net_signature_from_the_session():
    remover = onnx_remover()
    assert remover.input_name == "input.1"
    assert remover.input_size == 320 and remover.dynamic_batch
    assert len(remover.session.get_outputs()) == 7
    assert remover.session.get_providers()[-1] == "CPUExecutionProvider"


def test_onnx_masks_have_image_size_and_unit_range():
    photos = [load_photo(name) for name in STUDIO_PHOTOS] + [Image.new("RGB", (37, 501), "white")]
    masks = onnx_remover().masks(photos)
    assert [m.shape for m in masks] == [(p.height, p.width) for p in photos]
    for mask in masks:
        assert mask.dtype == np.float32 and 0 <= mask.min() and mask.max() <= 1


def test_onnx_tiny_model_finds_studio_objects():
    names = STUDIO_PHOTOS
    masks = onnx_remover().masks([load_photo(name) for name in names])
    scores = {name: iou(mask, true_mask(name)) for name, mask in zip(names, masks, strict=True)}
    for name, score in scores.items():
        print(f"{name}: tiny onnx IoU {score:.4f}")
    # for information: it takes the contact shadow for object (the classical remover does not)
    assert min(score for name, score in scores.items() if name != "offwhite_shadow") >= 0.85


def test_onnx_batched_call_equals_per_image_calls():
    remover = onnx_remover()
    photos = [load_photo("mug_gradient"), load_photo("non_square"), load_photo("jpeg_photo")]
    batched = remover.masks(photos)
    single = [remover.masks([photo])[0] for photo in photos]
    for a, b in zip(batched, single, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_onnx_static_batch_model_runs_image_by_image(tmp_path):
    remover = onnx_remover(write_variant(tmp_path, "static.onnx", batch=1))
    assert not remover.dynamic_batch
    photos = [load_photo("plain_white"), load_photo("non_square")]
    for a, b in zip(remover.masks(photos), onnx_remover().masks(photos), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_onnx_logits_model_is_passed_through_a_sigmoid(tmp_path):
    logits = onnx_remover(write_variant(tmp_path, "logits.onnx", output="logits"), output="logits")
    photos = [load_photo("mug_gradient"), load_photo("dark_on_light")]
    for a, b in zip(logits.masks(photos), onnx_remover().masks(photos), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_onnx_logits_read_as_probabilities_differ(tmp_path):
    # the setting matters: raw logits min-max stretched are not the probabilities
    wrong = onnx_remover(write_variant(tmp_path, "logits.onnx", output="logits"))
    photo = [load_photo("mug_gradient")]
    assert np.abs(wrong.masks(photo)[0] - onnx_remover().masks(photo)[0]).max() > 0.05


def test_onnx_missing_model_file_names_the_path(tmp_path):
    missing = tmp_path / "models" / "u2net.onnx"
    with pytest.raises(FileNotFoundError, match=str(missing)) as raised:
        onnx_remover(missing)
    assert "nothing is downloaded" in str(raised.value)


def test_onnx_relative_model_path_resolves_against_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert onnx_remover(TINY_MODEL_RELATIVE).input_size == 320


def test_onnx_config_requires_a_model_path():
    with pytest.raises(ValidationError, match="onnx_model is required when remover is 'onnx'"):
        BackgroundConfig(remover="onnx")


def test_onnx_config_rejects_unknown_fields_and_bad_std():
    with pytest.raises(ValidationError, match="extra"):
        BackgroundConfig.model_validate({"remover": "classical", "model": "u2net"})
    with pytest.raises(ValidationError, match="std must be positive"):
        BackgroundConfig(std=(0.2, 0.0, 0.2))


def test_onnx_input_size_other_than_the_static_one_is_rejected():
    with pytest.raises(ValueError, match="input_size 1024 does not match"):
        onnx_remover(input_size=1024)


def test_onnx_dynamic_input_size_needs_input_size(tmp_path):
    model = tiny_model_script().build_model()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "width"
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, path)
    with pytest.raises(ValueError, match="set input_size"):
        onnx_remover(path)
    assert onnx_remover(path, input_size=320).input_size == 320


def test_onnx_default_providers_prefer_cuda_when_offered():
    class Runtime:  # stands in for the onnxruntime module: only what _providers asks of it
        def __init__(self, available: list[str]) -> None:
            self.available = available

        def get_available_providers(self) -> list[str]:
            return self.available

    gpu = Runtime(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert _providers(None, gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert _providers(None, Runtime(["AzureExecutionProvider", "CPUExecutionProvider"])) == ["CPUExecutionProvider"]
    assert _providers(["CPUExecutionProvider"], gpu) == ["CPUExecutionProvider"]


def test_onnx_unavailable_provider_is_rejected():
    with pytest.raises(ValueError, match="TensorrtExecutionProvider"):
        onnx_remover(providers=["TensorrtExecutionProvider"])


def test_onnx_blank_photo_gives_an_empty_mask():
    # the map is flat: stretching it to [0, 1] would turn model noise into a full-frame object
    (mask,) = onnx_remover().masks([Image.new("RGB", (300, 200), (250, 250, 250))])
    assert mask.max() < 0.5


def test_make_remover_picks_the_configured_remover():
    assert isinstance(make_remover(BackgroundConfig()), ClassicalRemover)
    assert isinstance(make_remover(BackgroundConfig(remover="onnx", onnx_model=TINY_MODEL_RELATIVE)), OnnxRemover)
