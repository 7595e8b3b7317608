"""The application builder named in `serve_config.yaml` (`import_path: serve_app.app:build_app`).

`args:` in the YAML is one :class:`OrfeasArgs`: `app` configures the ingress and the job workers (HTTP,
auth, jobs, storage), `generators` the models (one ShapeGenerator deployment each; `generator` is the
one-model form of older configs). Validated here, so a bad config fails `serve run` / `serve deploy` before
any replica starts. Deployment options (replicas, resources, batch `user_config`) live in the YAML's
`deployments:` section, one entry per deployment, the generators by name (`ShapeGenerator-<model name>`;
the one of a single `generator:` keeps the name `ShapeGenerator`):

    AgentIngress (HTTP) --notify--> JobWorker (claims jobs) --generate--> ShapeGenerator-<model> (batches, GPU)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from ray.serve import Application

from deployments.generator_config import GeneratorConfig
from deployments.hunyuan3d.config import ShapeModelConfig, named_config
from deployments.paths import resolve_path
from serve_app.config import AppConfig, DefaultParams
from serve_app.model_catalog import (
    GENERATOR_DEPLOYMENT,
    SINGLE_VIEW,
    ModelCatalog,
    ServedModel,
    deployment_name,
    model_family,
)

logger = logging.getLogger("ray.serve")


class OrfeasArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    app: AppConfig  # required: at least `mode`
    generator: GeneratorConfig | None = None
    generators: tuple[GeneratorConfig, ...] | None = None

    @model_validator(mode="after")
    def _models(self) -> OrfeasArgs:
        if self.generator is not None and self.generators is not None:
            raise ValueError("set `generator` (one model) or `generators` (a list of models), not both")
        if self.generators is not None and not self.generators:
            raise ValueError("`generators` must list at least one model")
        if self.app.models is not None:
            raise ValueError("`app.models` is filled in by the builder from `generators`; remove it from the YAML")
        if self.generators is not None and "model_name" in self.app.model_fields_set:
            raise ValueError(
                "`app.model_name` names the model of a single `generator`; with `generators` set each "
                "entry's `name` instead"
            )
        entries = self.entries
        seen: dict[str, int] = {}
        deployments: dict[str, int] = {}
        for index, (name, entry) in enumerate(zip(self.model_names, entries, strict=True)):
            where = self._where(index, name)
            if name in seen:
                raise ValueError(
                    f"{where}: the model name is also {self._where(seen[name], name)}'s; give one of "
                    "them a distinct `name`"
                )
            seen[name] = index
            deployment = self.deployment_names[index]
            if deployment in deployments:
                other = deployments[deployment]
                raise ValueError(
                    f"{where}: its deployment name {deployment!r} is also "
                    f"{self._where(other, self.model_names[other])}'s; rename one of them"
                )
            deployments[deployment] = index
            try:
                self.job_defaults(entry)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'defaults'}: {e['msg']}" for e in exc.errors())
                raise ValueError(f"{where}: invalid `defaults`: {problems}") from None
        marked = [index for index, entry in enumerate(entries) if entry.default]
        if len(marked) > 1:
            listed = " and ".join(self._where(index, self.model_names[index]) for index in marked)
            raise ValueError(f"{listed} both say `default: true`; keep it on one")
        return self

    def _where(self, index: int, name: str) -> str:
        return f"generators[{index}] ({name!r})" if self.generators is not None else f"generator ({name!r})"

    @property
    def entries(self) -> tuple[GeneratorConfig, ...]:
        """Every model's generator config, in config order."""
        if self.generators is not None:
            return self.generators
        return (self.generator or GeneratorConfig(),)

    @property
    def model_names(self) -> list[str]:
        if self.generators is None:
            # an older one-model config may name its model in `app.model_name`
            entry = self.entries[0]
            if entry.name is None and "model_name" in self.app.model_fields_set:
                return [self.app.model_name]
            return [entry.model_name()]
        return [entry.model_name() for entry in self.generators]

    @property
    def deployment_names(self) -> list[str]:
        if self.generators is None:
            return [GENERATOR_DEPLOYMENT]  # what existing configs size in `deployments:`
        return [deployment_name(name) for name in self.model_names]

    @property
    def default_index(self) -> int:
        return next((index for index, entry in enumerate(self.entries) if entry.default), 0)

    def job_defaults(self, entry: GeneratorConfig) -> dict[str, Any]:
        """The app's defaults with the entry's over them, the model's own where both leave them null."""
        merged = DefaultParams.model_validate({**self.app.defaults.model_dump(), **entry.defaults})
        return merged.for_model(entry.variant_name())

    def catalog(self) -> ModelCatalog:
        """The served models as the ingress, the job workers and capabilities see them (reads each model's
        config.yaml for its views)."""
        served = []
        for index, (name, entry) in enumerate(zip(self.model_names, self.entries, strict=True)):
            variant = entry.variant_name()
            try:
                views = model_views(entry)
            except ValueError as exc:  # e.g. a model family this project does not implement
                raise ValueError(f"{self._where(index, name)}: {exc}") from None
            served.append(
                ServedModel(
                    name=name,
                    default=index == self.default_index,
                    family=model_family(variant),
                    variant=variant,
                    views=views,
                    job_defaults=self.job_defaults(entry),
                    deployment=self.deployment_names[index],
                )
            )
        return ModelCatalog(models=tuple(served))


def model_views(entry: GeneratorConfig) -> tuple[str, ...]:
    """The views a model takes, from its folder's config.yaml (or, for random weights, the named config).

    The builder may run on a node without the weights (`serve deploy` builds on the cluster): a folder that
    is not there falls back to the variant's named config, else one front view, with a warning.
    """
    path = resolve_path(entry.model)
    config_file = path / "config.yaml" if path.is_dir() else path
    if config_file.is_file():
        return tuple(ShapeModelConfig.from_yaml(config_file).view_names)
    variant = entry.variant_name()
    try:
        return tuple(named_config(variant).view_names)
    except ValueError:
        if not entry.random_weights:
            logger.warning("model %s: %s not found here; assuming one front view", variant, config_file)
        return SINGLE_VIEW


def build_app(args: OrfeasArgs | dict[str, Any] | None = None) -> Application:
    # heavy imports (Ray deployments, torch) only when an application is really built
    from deployments.shape_generator import ShapeGenerator
    from serve_app.ingress import AgentIngress
    from serve_app.worker import JobWorker

    parsed = OrfeasArgs.model_validate(args or {})
    catalog = parsed.catalog()
    # replicas do not start in this directory: resolve the data directory once, here
    app_config = parsed.app.resolved(Path.cwd()).model_copy(
        update={"models": catalog, "model_name": catalog.default.name}
    )
    logger.info(
        "ORFEAS serve: %s mode, data in %s, models %s (default %s)",
        app_config.mode,
        app_config.data_dir,
        catalog.names,
        catalog.default.name,
    )
    # @serve.deployment turned each class into a Deployment; its type hints cannot tell the type checker
    generators = {
        served.name: ShapeGenerator.options(name=served.deployment).bind(entry.replica_config())  # type: ignore[attr-defined]
        for served, entry in zip(catalog.models, parsed.entries, strict=True)
    }
    worker = JobWorker.bind(generators, app_config)  # type: ignore[attr-defined]
    return AgentIngress.bind(worker, app_config)  # type: ignore[attr-defined]
