"""Fixtures of the job tests: a fresh schema on each backend (``db_url``), artifacts in a temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.artifacts import ArtifactStore
from serve_app.config import JobSettings
from serve_app.jobs import JobStore
from tests.jobs.helpers import ManualClock


@pytest.fixture
def engine(any_engine: AsyncEngine) -> AsyncEngine:
    """Every job test runs on both backends."""
    return any_engine


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "data")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(engine: AsyncEngine, artifacts: ArtifactStore, clock: ManualClock) -> JobStore:
    return JobStore(engine, artifacts, JobSettings(max_queued=20, default_deadline_s=600), clock=clock)
