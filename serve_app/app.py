"""The application builder named in `serve_config.yaml` (`import_path: serve_app.app:build_app`).

`args:` in the YAML is one :class:`OrfeasArgs`: `app` configures the ingress and the job workers (HTTP,
auth, jobs, storage), `generator` the model replica. Validated here, so a bad config fails `serve run` /
`serve deploy` before any replica starts. Deployment options (replicas, resources, batch `user_config`)
live in the YAML's `deployments:` section, one entry per deployment:

    AgentIngress (HTTP) --notify--> JobWorker (claims jobs) --generate--> ShapeGenerator (batches, GPU)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from ray.serve import Application

from deployments.generator_config import GeneratorConfig
from serve_app.config import AppConfig

logger = logging.getLogger("ray.serve")


class OrfeasArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    app: AppConfig  # required: at least `mode`
    generator: GeneratorConfig = GeneratorConfig()


def build_app(args: OrfeasArgs | dict[str, Any] | None = None) -> Application:
    # heavy imports (Ray deployments, torch) only when an application is really built
    from deployments.shape_generator import ShapeGenerator
    from serve_app.ingress import AgentIngress
    from serve_app.worker import JobWorker

    parsed = OrfeasArgs.model_validate(args or {})
    # replicas do not start in this directory: resolve the data directory once, here
    app_config = parsed.app.resolved(Path.cwd())
    if "model_name" not in parsed.app.model_fields_set:
        app_config = app_config.model_copy(update={"model_name": parsed.generator.variant_name()})
    logger.info(
        "ORFEAS serve: %s mode, data in %s, model %s", app_config.mode, app_config.data_dir, app_config.model_name
    )
    # @serve.deployment turned each class into a Deployment; its type hints cannot tell the type checker
    generator = ShapeGenerator.bind(parsed.generator)  # type: ignore[attr-defined]
    worker = JobWorker.bind(generator, app_config)  # type: ignore[attr-defined]
    return AgentIngress.bind(worker, app_config)  # type: ignore[attr-defined]
