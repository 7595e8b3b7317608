"""Shared fixtures: database URLs for both supported backends.

``db_url`` runs a test once on SQLite (a temp file) and once on the local PostgreSQL server, in a fresh
database that is dropped afterwards. Set ORFEAS_TEST_PG_ADMIN_URL to point at another server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.artifact_settings import S3ArtifactSettings
from serve_app.db import make_engine
from serve_app.schema import upgrade_schema

PG_ADMIN_DSN = os.environ.get("ORFEAS_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def _pg_execute(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """A fresh, empty Postgres database (dropped on exit); yields its SQLAlchemy URL."""
    name = f"orfeas_test_{uuid.uuid4().hex[:12]}"
    await _pg_execute(f'CREATE DATABASE "{name}"')
    host_part = PG_ADMIN_DSN.split("://", 1)[1].rsplit("/", 1)[0]
    try:
        yield f"postgresql+asyncpg://{host_part}/{name}"
    finally:
        await _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def engine_with_schema(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``url`` with the schema at the newest revision (every table of the app)."""
    engine = make_engine(url)
    await upgrade_schema(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def any_engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """A fresh schema once on SQLite and once on the local Postgres."""
    async with engine_with_schema(db_url) as engine:
        yield engine


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'orfeas.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'orfeas.db'}"
    else:
        async with fresh_postgres_database() as url:
            yield url


# --- local Ray (appended by the ShapeGenerator work; shared with the ingress tests) ---------------------------

from collections.abc import Iterator  # noqa: E402


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session() -> Iterator[str]:
    """One local Ray + Serve for the whole test run (ray.init costs 6-9 s, serve.shutdown ~5 s).

    Four logical CPUs on any machine so several apps fit; deployments in tests still ask for
    ``num_cpus: 0`` (a 2-core box would otherwise hang waiting for resources). Workers import the
    project from the driver's working directory, so run pytest from the repository root.
    Yields the base URL of Serve's HTTP proxy.

    Serve starts the way serve_config.yaml does: its proxy trusts no X-Forwarded-For
    (``FORWARDED_ALLOW_IPS=""`` in the controller's environment, inherited by proxy and replicas), or the
    ingress refuses to start (serve_app.auth.serve_proxy).
    """
    import ray
    from ray import serve

    from serve_app.auth.serve_proxy import FORWARDED_ALLOW_IPS

    ray.init(num_cpus=4, include_dashboard=False)
    # Serve's HTTP proxy on a free port, so tests never collide with a dev server on :8000
    port = _free_port()
    serve.start(
        http_options={"host": "127.0.0.1", "port": port},
        controller_options={"runtime_env": {"env_vars": {FORWARDED_ALLOW_IPS: ""}}},
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


# --- a local S3 server (appended by the S3 artifacts work) ----------------------------------------------------


@pytest.fixture(scope="session")
def moto_s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free port, shared by the session; each test gets its own bucket."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_settings(moto_s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3ArtifactSettings:
    """A fresh bucket in the moto server and the ``app.artifacts`` settings that point at it."""
    import boto3

    # the backend reads credentials from the environment, as in production
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    bucket = f"orfeas-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=moto_s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=bucket)
    return S3ArtifactSettings(
        kind="s3",
        bucket=bucket,
        prefix="orfeas/test",
        endpoint_url=moto_s3_endpoint,
        region="us-east-1",
        allow_http=True,
    )
