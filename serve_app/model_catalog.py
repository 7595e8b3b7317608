"""The models an application serves: what jobs may name in `model`, and what each one gets by default.

Built once, by the application builder (``serve_app.app``), from the `generator:` / `generators:` entries of
the serve config, and carried to every replica inside :class:`~serve_app.config.AppConfig` (`models`): the
ingress validates a job's `model` and fills its defaults from it, capabilities list it, the job worker knows
which names it has a generator for. Torch-free and Ray-free, like the rest of the config.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.hunyuan3d.config import NAMED_CONFIGS

# The one deployment of a single `generator:` keeps the name existing configs size in `deployments:`.
GENERATOR_DEPLOYMENT = "ShapeGenerator"
# Deployment names may hold anything but '#' (Serve's replica-id separator); keep them to what reads well in
# `serve status`, logs and metrics tags.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

# Variant-name prefixes of the released model folders, most specific first -> the family capabilities report.
_FAMILIES = (
    ("hunyuan3d-dit-v2-1", "hunyuan3d-2.1"),
    ("hunyuan3d-dit-v2-mv", "hunyuan3d-2mv"),
    ("hunyuan3d-dit-v2-mini", "hunyuan3d-2mini"),
    ("hunyuan3d-dit-v2-0", "hunyuan3d-2"),
)
SINGLE_VIEW = ("front",)


def deployment_name(model_name: str) -> str:
    """``ShapeGenerator-<name>``, with characters other than letters, digits, ``.``, ``_``, ``-`` as ``-``."""
    return f"{GENERATOR_DEPLOYMENT}-{_UNSAFE.sub('-', model_name)}"


def model_family(variant: str) -> str:
    """The released family a variant (model folder) name belongs to; ``custom`` for any other name."""
    for prefix, family in _FAMILIES:
        if variant.startswith(prefix):
            return family
    return "custom"


def variant_views(variant: str) -> tuple[str, ...]:
    """The views of a named real-size variant; a single front view for any other name."""
    named = NAMED_CONFIGS.get(variant)
    return tuple(named.view_names) if named is not None else SINGLE_VIEW


class ServedModel(BaseModel):
    """One model jobs may choose: reported as is by `GET /api/agent/capabilities`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="What a job's `model` says.")
    default: bool = Field(description="Whether jobs that name no model get this one.")
    family: str = Field(description="Released family, e.g. `hunyuan3d-2`, `hunyuan3d-2.1`; `custom` otherwise.")
    variant: str = Field(description="The model folder (variant) name, e.g. `hunyuan3d-dit-v2-0-fast`.")
    views: tuple[str, ...] = Field(description="The named views a job may send, front first.")
    job_defaults: dict[str, Any] = Field(description="Every parameter a job on this model gets when it omits it.")
    deployment: str = Field(description="The ShapeGenerator deployment serving it (size it in `deployments:`).")


class ModelCatalog(BaseModel):
    """The served models, in config order, exactly one of them the default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: tuple[ServedModel, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> ModelCatalog:
        names = [model.name for model in self.models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; {duplicates} appear more than once")
        defaults = [model.name for model in self.models if model.default]
        if len(defaults) != 1:
            raise ValueError(f"exactly one model must be the default, got {defaults or 'none'}")
        return self

    @property
    def names(self) -> list[str]:
        return [model.name for model in self.models]

    @property
    def default(self) -> ServedModel:
        return next(model for model in self.models if model.default)

    def get(self, name: str) -> ServedModel | None:
        return next((model for model in self.models if model.name == name), None)
