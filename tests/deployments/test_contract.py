"""The contract across the model handle: validation at construction, pickling, error codes, light imports."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from deployments.contract import ErrorCode, GenerationError, GenerationRequest, MeshOptions, split_job_params
from deployments.hunyuan3d import GenerationParams

from .conftest import FAST, FAST_DICT, REPO, object_png


def test_request_params_dict_is_validated_into_generation_params():
    request = GenerationRequest(object_png(), seed=3, params=FAST_DICT)
    assert request.params == FAST


def test_request_unknown_param_is_rejected_naming_it():
    with pytest.raises(ValueError, match=r"unknown generation parameter\(s\) \['steps'\]"):
        GenerationRequest(object_png(), params={"steps": 5})


@pytest.mark.parametrize("seed", [-1, 2**53, 2**63, 1.5, True])
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
    with pytest.raises(TypeError, match="image must be the encoded image bytes, got str"):
        GenerationRequest("cat.png")  # type: ignore[arg-type]


def test_request_bytearray_image_becomes_bytes():
    assert isinstance(GenerationRequest(bytearray(object_png())).image, bytes)  # type: ignore[arg-type]


def test_request_defaults_are_normal_priority_and_default_params():
    request = GenerationRequest(object_png())
    assert (request.priority, request.params, request.job_id) == ("normal", GenerationParams(), None)


def test_error_survives_pickling_with_its_fields():
    error = GenerationError(ErrorCode.OUT_OF_MEMORY, "too big", job_id="job-1")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.code, copy.message, copy.job_id, str(copy)) == (
        GenerationError,
        ErrorCode.OUT_OF_MEMORY,
        "too big",
        "job-1",
        "out_of_memory: too big",
    )


@pytest.mark.parametrize(
    ("code", "retryable"),
    [("invalid_image", False), ("empty_surface", False), ("out_of_memory", True), ("internal_error", True)],
)
def test_error_retryable_follows_code(code, retryable):
    error = GenerationError(code, "x")
    assert (error.code.value, error.retryable) == (code, retryable)


def test_error_unknown_code_is_refused():
    with pytest.raises(ValueError, match="'empty_mesh' is not a valid ErrorCode"):
        GenerationError("empty_mesh", "x")


def test_error_codes_are_unique_and_each_has_a_retryable_flag_and_a_meaning():
    assert len({code.value for code in ErrorCode}) == len(ErrorCode)
    assert all(isinstance(code.retryable, bool) and code.meaning and code.value.islower() for code in ErrorCode)


def test_contract_imports_without_torch_ray_or_numpy():
    code = (
        "import sys, deployments.contract\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'numpy', 'trimesh', 'PIL'})\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_split_job_params_separates_pass_cleanup_and_background():
    generation, mesh, mode = split_job_params(
        {"num_inference_steps": 5, "max_faces": 2000, "remove_floaters": False, "remove_background": "always"}
    )
    assert (generation.num_inference_steps, mesh, mode) == (5, MeshOptions(2000, False), "always")
    assert split_job_params({})[1:] == (MeshOptions(), "auto")  # jobs stored before these params existed


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_faces": 10}, r"max_faces must be 0 \(no reduction\) or between 1000"),
        ({"max_faces": True}, "max_faces must be an integer"),
        ({"remove_floaters": 1}, "remove_floaters must be true or false"),
        ({"remove_background": "maybe"}, "remove_background must be one of"),
        ({"steps": 5}, r"unknown generation parameter\(s\) \['steps'\]"),
    ],
)
def test_split_job_params_bad_values_name_the_field(params, message):
    with pytest.raises(ValueError, match=message):
        split_job_params(params)


def test_request_views_are_the_other_views_and_view_names_put_front_first():
    request = GenerationRequest(b"front", views={"right": bytearray(b"r"), "left": b"l"})
    assert request.views == {"right": b"r", "left": b"l"}
    assert request.view_names == ("front", "left", "right")
    assert GenerationRequest(b"front").view_names == ("front",)


@pytest.mark.parametrize("views", [{"front": b"x"}, {"top": b"x"}])
def test_request_views_refuse_front_and_unknown_names(views):
    with pytest.raises(ValueError, match="unknown view"):
        GenerationRequest(b"front", views=views)


def test_request_empty_view_is_rejected_naming_it():
    with pytest.raises(ValueError, match="view 'back' is empty"):
        GenerationRequest(b"front", views={"back": b""})


def test_request_with_views_survives_pickling():
    request = GenerationRequest(b"front", views={"back": b"b"})
    assert pickle.loads(pickle.dumps(request)).views == {"back": b"b"}
