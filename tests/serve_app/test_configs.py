"""The committed Serve configs are valid and keep the batching invariants their comments promise."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments.generator_config import BatchingConfig
from serve_app.app import OrfeasArgs

REPO = Path(__file__).resolve().parents[2]
APP_CONFIGS = [REPO / "serve_config.yaml", REPO / "configs" / "cluster.example.yaml"]


def _deployment(app: dict, name: str) -> dict:
    return next(d for d in app["deployments"] if d["name"] == name)


@pytest.mark.parametrize("path", APP_CONFIGS, ids=lambda p: p.name)
def test_config_args_and_user_config_validate(path):
    app = yaml.safe_load(path.read_text())["applications"][0]
    assert app["import_path"] == "serve_app.app:build_app"
    args = OrfeasArgs.model_validate(app["args"])
    workers = _deployment(app, "JobWorker")["num_replicas"]
    total = 0
    # every model's deployment is sized in the YAML (a renamed model without its entry would run unsized)
    for name in args.deployment_names:
        generator = _deployment(app, name)
        batching = BatchingConfig.model_validate(generator["user_config"])
        batch = batching.max_batch_size if isinstance(batching.max_batch_size, int) else batching.auto_max_batch_size
        # whole batches must be able to reach the replica (plus one waiting), and the dispatchers must send that many
        in_flight = batch * (batching.max_concurrent_batches + 1)
        assert generator["max_ongoing_requests"] >= in_flight
        assert args.app.jobs.dispatcher_concurrency >= in_flight
        total += in_flight
    assert workers * args.app.jobs.dispatcher_concurrency >= total


def test_embedded_default_is_dev_mode_on_cpu_with_sqlite():
    app = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]
    args = OrfeasArgs.model_validate(app["args"])
    assert args.app.mode == "dev" and args.app.database_url is None
    assert len(args.entries) == 2  # two tiny models, the first the default
    for entry in args.entries:
        assert entry.device == "cpu"
        assert (REPO / entry.model / "config.yaml").is_file()
    assert args.catalog().default.name == "hunyuan3d-dit-v2-0"
    # both fit the 2 logical CPUs of a 2-core laptop (a replica that does not fit waits forever)
    decorator_cpus = {"AgentIngress": 0.5, "JobWorker": 0.25}  # the defaults in ingress.py / worker.py
    cpus = 0.0
    for deployment in app["deployments"]:
        default = decorator_cpus.get(deployment["name"], 1.0)  # ShapeGenerator's decorator asks for 1
        cpus += deployment.get("num_replicas", 1) * deployment.get("ray_actor_options", {}).get("num_cpus", default)
    assert cpus <= 2


def test_production_example_never_creates_keys():
    app = yaml.safe_load((REPO / "configs" / "cluster.example.yaml").read_text())["applications"][0]
    args = OrfeasArgs.model_validate(app["args"])
    assert args.app.mode == "production" and args.app.database_url.startswith("postgresql+asyncpg://")


def test_config_refuses_a_default_face_budget_no_job_could_use():
    from pydantic import ValidationError

    from serve_app.config import DefaultParams

    with pytest.raises(ValidationError, match=r"max_faces must be 0 \(no reduction\) or between 1000"):
        DefaultParams(max_faces=500)


def test_a_config_without_mode_does_not_start_as_dev():
    # fail closed: forgetting `mode` must not silently create keys with every scope
    with pytest.raises(ValidationError, match="mode"):
        OrfeasArgs.model_validate({"app": {"data_dir": "/tmp/x"}})
    with pytest.raises(ValidationError, match="app"):
        OrfeasArgs.model_validate({})
