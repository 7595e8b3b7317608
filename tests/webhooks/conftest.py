"""Fixtures of the webhook tests: a job store and an endpoint store on each backend, a master key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.artifacts import ArtifactStore
from serve_app.auth.secret import Secret
from serve_app.config import JobSettings
from serve_app.jobs import JobStore, utcnow
from serve_app.webhooks.endpoints import EndpointStore


@pytest.fixture
def engine(any_engine: AsyncEngine) -> AsyncEngine:
    return any_engine


@pytest.fixture
def master_key() -> Secret:
    return Secret(os.urandom(32))


@pytest.fixture
def store(engine: AsyncEngine, tmp_path: Path) -> JobStore:
    return JobStore(engine, ArtifactStore(tmp_path / "data"), JobSettings(max_queued=50, default_deadline_s=600))


@pytest.fixture
def endpoints(engine: AsyncEngine, master_key: Secret) -> EndpointStore:
    return EndpointStore(engine, master_key, clock=utcnow)
