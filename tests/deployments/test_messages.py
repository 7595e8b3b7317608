from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from deployments.hunyuan3d import GenerationParams
from deployments.messages import GenerationError, GenerationRequest, GenerationResult

from .conftest import FAST, FAST_DICT, object_png


def test_request_params_dict_is_validated_into_generation_params():
    request = GenerationRequest(object_png(), seed=3, params=FAST_DICT)
    assert request.params == FAST


def test_request_unknown_param_is_rejected_naming_it():
    with pytest.raises(ValueError, match=r"unknown generation parameter\(s\) \['steps'\]"):
        GenerationRequest(object_png(), params={"steps": 5})


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, True])
def test_request_bad_seed_is_rejected(seed):
    with pytest.raises(ValueError, match="seed must be an integer"):
        GenerationRequest(object_png(), seed=seed)


def test_request_unknown_priority_is_rejected():
    with pytest.raises(ValueError, match=r"priority must be one of \['normal', 'critical'\]"):
        GenerationRequest(object_png(), priority="urgent")  # type: ignore[arg-type]


def test_request_empty_image_bytes_are_rejected():
    with pytest.raises(ValueError, match="image is empty"):
        GenerationRequest(b"")


def test_request_image_of_wrong_type_is_rejected():
    with pytest.raises(TypeError, match="image must be encoded bytes or a PIL image, got str"):
        GenerationRequest("cat.png")  # type: ignore[arg-type]


def test_request_bytearray_image_becomes_bytes_and_pil_is_kept():
    assert isinstance(GenerationRequest(bytearray(object_png())).image, bytes)
    image = Image.new("RGB", (8, 8))
    assert GenerationRequest(image).image is image


def test_request_defaults_are_normal_priority_and_default_params():
    request = GenerationRequest(object_png())
    assert (request.priority, request.params, request.job_id) == ("normal", GenerationParams(), None)


def test_error_survives_pickling_with_its_fields():
    error = GenerationError("out_of_memory", "too big", job_id="job-1")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.code, copy.message, copy.job_id, str(copy)) == (
        GenerationError, "out_of_memory", "too big", "job-1", "out_of_memory: too big"
    )


@pytest.mark.parametrize(("code", "retryable"), [("invalid_image", False), ("empty_surface", False),
                                                 ("out_of_memory", True), ("internal", True)])
def test_error_retryable_follows_code(code, retryable):
    error = GenerationError(code, "x")
    assert error.retryable is retryable
    assert error.to_dict() == {"code": code, "message": "x", "retryable": retryable, "job_id": None}


def test_result_to_trimesh_keeps_arrays_unchanged():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)  # a duplicate vertex
    faces = np.array([[0, 1, 2]], dtype=np.int64)
    result = GenerationResult(vertices, faces, timings={}, batch_size=1, queue_wait_s=0.0, seed=0)
    mesh = result.to_trimesh()
    assert len(mesh.vertices) == 4  # not merged: process=False
    np.testing.assert_array_equal(mesh.faces, faces)
