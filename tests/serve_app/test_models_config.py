"""Several served models: `generators:` in the builder's args, the catalog it makes, its validation errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.generator_config import GeneratorConfig
from serve_app.app import OrfeasArgs, model_views
from serve_app.config import AppConfig
from serve_app.model_catalog import ModelCatalog, ServedModel, deployment_name, model_family

V2_0 = "configs/models/tiny-Hunyuan3D-2/hunyuan3d-dit-v2-0"
V2_0_FAST = "configs/models/tiny-Hunyuan3D-2/hunyuan3d-dit-v2-0-fast"
APP = {"mode": "dev"}


def _args(*generators: dict, **app: object) -> OrfeasArgs:
    return OrfeasArgs.model_validate({"app": {**APP, **app}, "generators": list(generators)})


def test_models_config_names_default_to_the_folder_and_the_first_is_the_default():
    catalog = _args({"model": V2_0}, {"model": V2_0_FAST}).catalog()
    assert catalog.names == ["hunyuan3d-dit-v2-0", "hunyuan3d-dit-v2-0-fast"]
    assert catalog.default.name == "hunyuan3d-dit-v2-0"
    fast = catalog.get("hunyuan3d-dit-v2-0-fast")
    assert fast is not None
    assert (fast.family, fast.variant, fast.views, fast.default) == (
        "hunyuan3d-2",
        "hunyuan3d-dit-v2-0-fast",
        ("front",),
        False,
    )
    assert fast.deployment == "ShapeGenerator-hunyuan3d-dit-v2-0-fast"


def test_models_config_default_flag_and_explicit_names():
    catalog = _args({"model": V2_0, "name": "big"}, {"model": V2_0_FAST, "name": "quick", "default": True}).catalog()
    assert (catalog.names, catalog.default.name) == (["big", "quick"], "quick")
    assert [model.deployment for model in catalog.models] == ["ShapeGenerator-big", "ShapeGenerator-quick"]


def test_models_config_per_model_defaults_override_the_apps():
    args = _args(
        {"model": V2_0},
        {"model": V2_0_FAST, "defaults": {"num_inference_steps": 4, "max_faces": 0}},
        {"model": "hunyuan3d-dit-v2-0-turbo", "random_weights": True, "defaults": {"num_inference_steps": None}},
        defaults={"num_inference_steps": 12, "octree_resolution": 128},
    )
    base, fast, turbo = args.catalog().models
    assert (base.job_defaults["num_inference_steps"], base.job_defaults["octree_resolution"]) == (12, 128)
    assert base.job_defaults["max_faces"] == 40_000
    assert (fast.job_defaults["num_inference_steps"], fast.job_defaults["max_faces"]) == (4, 0)
    assert fast.job_defaults["octree_resolution"] == 128  # the app's, not overridden
    # null in the entry: the model's own (5 for a turbo model), whatever the app says
    assert turbo.job_defaults["num_inference_steps"] == 5


def test_models_config_duplicate_names_are_refused_naming_both_entries():
    with pytest.raises(ValidationError, match=r"generators\[1\] \('hunyuan3d-dit-v2-0'\).*generators\[0\]"):
        _args({"model": V2_0}, {"model": V2_0, "warmup": False})


def test_models_config_names_that_share_a_deployment_name_are_refused():
    with pytest.raises(ValidationError, match=r"generators\[1\] \('a b'\): its deployment name 'ShapeGenerator-a-b'"):
        _args({"model": V2_0, "name": "a-b"}, {"model": V2_0_FAST, "name": "a b"})


def test_models_config_two_defaults_are_refused_naming_them():
    with pytest.raises(ValidationError, match=r"generators\[0\] \('a'\) and generators\[2\] \('c'\) both say"):
        _args(
            {"model": V2_0, "name": "a", "default": True},
            {"model": V2_0, "name": "b"},
            {"model": V2_0, "name": "c", "default": True},
        )


def test_models_config_bad_defaults_are_refused_naming_the_entry_and_field():
    with pytest.raises(ValidationError, match=r"generators\[1\] \('b'\): invalid `defaults`: steps: Extra inputs"):
        _args({"model": V2_0, "name": "a"}, {"model": V2_0, "name": "b", "defaults": {"steps": 3}})
    with pytest.raises(ValidationError, match=r"generators\[0\] \('a'\): invalid `defaults`: .*max_faces must be"):
        _args({"model": V2_0, "name": "a", "defaults": {"max_faces": 5}})


def test_models_config_generator_and_generators_together_are_refused():
    with pytest.raises(ValidationError, match="not both"):
        OrfeasArgs.model_validate({"app": APP, "generator": {"model": V2_0}, "generators": [{"model": V2_0}]})
    with pytest.raises(ValidationError, match="at least one model"):
        OrfeasArgs.model_validate({"app": APP, "generators": []})


def test_models_config_the_catalog_is_the_builders_not_the_yamls():
    single = {"name": "x", "default": True, "family": "custom", "variant": "x", "views": ["front"]}
    models = {"models": [{**single, "job_defaults": {}, "deployment": "ShapeGenerator-x"}]}
    with pytest.raises(ValidationError, match="filled in by the builder"):
        OrfeasArgs.model_validate({"app": {**APP, "models": models}})
    with pytest.raises(ValidationError, match="model_name"):
        _args({"model": V2_0}, model_name="other")


def test_models_config_a_single_generator_keeps_its_deployment_name_and_app_model_name():
    # existing configs size `ShapeGenerator` in their deployments section and may name the model in the app
    args = OrfeasArgs.model_validate({"app": {**APP, "model_name": "legacy"}, "generator": {"model": V2_0}})
    (model,) = args.catalog().models
    assert (model.name, model.deployment, model.default) == ("legacy", "ShapeGenerator", True)
    unnamed = OrfeasArgs.model_validate({"app": APP}).catalog()
    assert (unnamed.default.name, unnamed.default.deployment) == ("hunyuan3d-dit-v2-0", "ShapeGenerator")


def test_models_config_views_come_from_the_folder_config_or_the_named_variant():
    assert model_views(GeneratorConfig(model=V2_0)) == ("front",)
    assert model_views(GeneratorConfig(model="hunyuan3d-dit-v2-mini", random_weights=True)) == ("front",)
    # a folder missing where the builder runs (the weights live on the GPU nodes): one front view
    assert model_views(GeneratorConfig(model="/nowhere/hunyuan3d-dit-v2-x")) == ("front",)


def test_models_config_replica_config_drops_what_only_the_builder_reads():
    entry = GeneratorConfig(model=V2_0, name="a", default=True, defaults={"num_inference_steps": 3})
    replica = entry.replica_config()
    assert (replica.name, replica.default, replica.defaults, replica.model) == ("a", False, {}, V2_0)


def test_models_config_app_config_without_a_catalog_serves_model_name():
    config = AppConfig(mode="dev", model_name="hunyuan3d-dit-v2-0-turbo")
    (model,) = config.served_models.models
    assert (model.name, model.default, model.job_defaults["num_inference_steps"]) == (
        "hunyuan3d-dit-v2-0-turbo",
        True,
        5,
    )
    assert config.job_defaults == model.job_defaults


def test_models_config_catalog_refuses_duplicates_and_needs_one_default():
    model = ServedModel(
        name="a", default=True, family="custom", variant="a", views=("front",), job_defaults={}, deployment="d"
    )
    with pytest.raises(ValidationError, match=r"\['a'\] appear more than once"):
        ModelCatalog(models=(model, model.model_copy(update={"default": False})))
    with pytest.raises(ValidationError, match="exactly one model must be the default"):
        ModelCatalog(models=(model.model_copy(update={"default": False}),))


@pytest.mark.parametrize(
    ("variant", "family"),
    [
        ("hunyuan3d-dit-v2-0", "hunyuan3d-2"),
        ("hunyuan3d-dit-v2-0-turbo", "hunyuan3d-2"),
        ("hunyuan3d-dit-v2-mini-fast", "hunyuan3d-2mini"),
        ("hunyuan3d-dit-v2-mv", "hunyuan3d-2mv"),
        ("hunyuan3d-dit-v2-1", "hunyuan3d-2.1"),
        ("my-model", "custom"),
    ],
)
def test_models_config_family_of_a_variant(variant, family):
    assert model_family(variant) == family


def test_models_config_deployment_names_are_sanitised():
    assert deployment_name("hunyuan3d-dit-v2-0") == "ShapeGenerator-hunyuan3d-dit-v2-0"
    assert deployment_name("big model#1/β") == "ShapeGenerator-big-model-1-"


def test_models_config_a_folder_missing_where_the_builder_runs_is_named_by_its_basename():
    # `serve deploy` builds on the cluster, maybe on a node without the weights
    catalog = _args({"model": "/models/Hunyuan3D-2/hunyuan3d-dit-v2-0-turbo"}).catalog()
    assert (catalog.default.name, catalog.default.family) == ("hunyuan3d-dit-v2-0-turbo", "hunyuan3d-2")
    assert catalog.default.job_defaults["num_inference_steps"] == 5
    assert catalog.default.deployment == "ShapeGenerator-hunyuan3d-dit-v2-0-turbo"
