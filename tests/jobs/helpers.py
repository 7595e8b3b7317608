"""Small fakes the job tests share: a clock the test moves, a model that makes real meshes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import trimesh

from deployments.contract import CANONICAL_FORMAT, GenerationError, GenerationRequest, GenerationResult, Outcome
from deployments.mesh_io import export_mesh, mesh_stats
from serve_app.jobs import JobRecord, JobStore, ModelUnavailable, NewJob

AGENT_A = "agent-a"
AGENT_B = "agent-b"
IMAGE = b"\x89PNG\r\n\x1a\n fake image bytes: the store never decodes them"


class ManualClock:
    """Naive-UTC time that only moves when the test says so."""

    def __init__(self, start: datetime = datetime(2030, 1, 1, 12, 0, 0)) -> None:
        self.current = start

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


def new_job(**overrides: Any) -> NewJob:
    values: dict[str, Any] = {"image": IMAGE, "model": "tiny", "seed": 7, "params": {"num_inference_steps": 5}}
    values.update(overrides)
    return NewJob(**values)


def result_of(mesh: trimesh.Trimesh, request: GenerationRequest, batch_size: int = 1) -> GenerationResult:
    """What the ShapeGenerator returns for ``request`` had it made ``mesh``."""
    return GenerationResult(
        glb=export_mesh(mesh, CANONICAL_FORMAT),
        stats=mesh_stats(mesh),
        timings={"diffusion": 0.01},
        batch_size=batch_size,
        queue_wait_s=0.0,
        seed=request.seed,
        job_id=request.job_id,
    )


class FakeModel:
    """An async generate function returning a real icosphere; optionally held until ``release()``.

    ``error``: a ``GenerationError`` is returned (as the handle returns it), any other exception raised.
    ``unavailable``: the first that many calls raise ``ModelUnavailable`` (their replica died).
    """

    def __init__(self, *, hold: bool = False, error: Exception | None = None, unavailable: int = 0) -> None:
        self.calls: list[GenerationRequest] = []
        self.cancelled: list[str | None] = []
        self.active = 0
        self.max_active = 0
        self._gate = asyncio.Event()
        if not hold:
            self._gate.set()
        self._error = error
        self._unavailable = unavailable

    def release(self) -> None:
        self._gate.set()

    async def __call__(self, request: GenerationRequest) -> Outcome:
        self.calls.append(request)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self._gate.wait()
            if len(self.calls) <= self._unavailable:
                raise ModelUnavailable("the model replica failed: ActorDiedError")
            if isinstance(self._error, GenerationError):
                return self._error
            if self._error is not None:
                raise self._error
            return result_of(trimesh.creation.icosphere(subdivisions=1), request)
        except asyncio.CancelledError:
            self.cancelled.append(request.job_id)
            raise
        finally:
            self.active -= 1


async def wait_for_status(
    store: JobStore, agent: str, job_id: str, statuses: Iterable[str], timeout_s: float = 10.0
) -> JobRecord:
    """Poll until the job reaches one of ``statuses``; fails the test with the last state seen."""
    wanted = set(statuses)
    deadline = time.monotonic() + timeout_s
    while True:
        job = await store.get(agent, job_id)
        if job is not None and job.status in wanted:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not reach {sorted(wanted)} in {timeout_s} s: {job}")
        await asyncio.sleep(0.02)


async def wait_until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
