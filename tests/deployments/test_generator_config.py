from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from deployments.generator_config import BatchingConfig, GeneratorConfig
from deployments.hunyuan3d import GenerationParams
from deployments.paths import resolve_path

SERVE_CONFIG = resolve_path("configs/serve_generator.yaml")


def load_serve_config() -> dict:
    return yaml.safe_load(SERVE_CONFIG.read_text())


def test_generator_config_defaults_point_at_the_tiny_checkpoint():
    config = GeneratorConfig()
    assert resolve_path(config.model).joinpath("config.yaml").is_file()
    assert config.variant_name() == "hunyuan3d-dit-v2-0"
    assert config.generation_params() == GenerationParams()


def test_generator_config_variant_name_of_a_random_weights_variant_is_the_name():
    assert GeneratorConfig(model="hunyuan3d-dit-v2-mini", random_weights=True).variant_name() == "hunyuan3d-dit-v2-mini"


def test_generator_config_explicit_variant_wins():
    assert GeneratorConfig(variant="hunyuan3d-dit-v2-0-fast").variant_name() == "hunyuan3d-dit-v2-0-fast"


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "mps"])
def test_generator_config_unknown_device_is_rejected(device):
    with pytest.raises(ValidationError, match="device must be auto, cpu, cuda or cuda:N"):
        GeneratorConfig(device=device)


def test_generator_config_bad_warmup_params_are_rejected_naming_the_field():
    with pytest.raises(ValidationError, match="octree_resolution must be between"):
        GeneratorConfig(warmup_params={"octree_resolution": 8})


def test_generator_config_unknown_field_is_rejected():
    with pytest.raises(ValidationError, match="max_batch_size"):
        GeneratorConfig(max_batch_size=4)  # belongs in user_config, not args


def test_batching_config_accepts_int_auto_and_table():
    assert [BatchingConfig(max_batch_size=v).max_batch_size for v in (4, "auto", "table")] == [4, "auto", "table"]


@pytest.mark.parametrize(
    "values",
    [
        {"max_batch_size": 0},
        {"max_batch_size": 65},
        {"max_batch_size": "max"},
        {"max_concurrent_batches": 0},
        {"max_concurrent_batches": 5},
        {"batch_wait_timeout_s": -0.1},
        {"vram_budget_gib": 0},
        {"inject_oom_above_batch_size": -1},
        {"batch_size": 4},
    ],
)
def test_batching_config_out_of_range_values_are_rejected(values):
    with pytest.raises(ValidationError):
        BatchingConfig(**values)


def test_serve_config_is_a_valid_serve_deploy_config():
    ServeDeploySchema.model_validate(load_serve_config())


def test_serve_config_args_and_user_config_validate():
    app = load_serve_config()["applications"][0]
    args = GeneratorConfig.model_validate(app["args"])
    assert resolve_path(args.model).is_dir()
    user_config = BatchingConfig.model_validate(app["deployments"][0]["user_config"])
    assert user_config.inject_oom_above_batch_size is None  # the test hook stays out of committed configs


def test_serve_config_max_ongoing_requests_holds_one_batch_more_than_in_flight():
    deployment = load_serve_config()["applications"][0]["deployments"][0]
    batching = BatchingConfig.model_validate(deployment["user_config"])
    assert isinstance(batching.max_batch_size, int)
    assert deployment["max_ongoing_requests"] >= batching.max_batch_size * (batching.max_concurrent_batches + 1)


def test_generator_config_acceleration_section_is_off_by_default_and_validated_from_yaml():
    assert GeneratorConfig().acceleration.model_dump() == {
        "compile_dit": False,
        "compile_decoder": False,
        "compile_mode": "default",
        "cuda_graphs": False,
        "sdpa_backends": (),
        "device_marching_cubes": False,
    }
    parsed = GeneratorConfig.model_validate(
        yaml.safe_load("acceleration: {compile_dit: true, sdpa_backends: [flash, math]}")
    )
    assert parsed.acceleration.compile_dit and parsed.acceleration.sdpa_backends == ("flash", "math")
    with pytest.raises(ValidationError, match="compile_dit"):
        GeneratorConfig.model_validate({"acceleration": {"compile_ditt": True}})
    with pytest.raises(ValidationError, match="sdpa_backends: unknown"):
        GeneratorConfig.model_validate({"acceleration": {"sdpa_backends": ["fastest"]}})
    with pytest.raises(ValidationError, match="has no effect"):
        GeneratorConfig.model_validate({"acceleration": {"compile_mode": "max-autotune"}})
