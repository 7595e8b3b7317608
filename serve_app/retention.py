"""Retention: inputs, results, converted formats and the audit log are not kept forever (issue 9, item 6).

What is deleted when:
  - a job's input image, and a multiview job's other views with it: when the job reaches a terminal state
    (the store's terminal transitions do it; a requeued job still needs them), or by the sweeper when a crash
    left them behind;
  - a job's result and its converted formats (``results/<job_id>/``): by the sweeper once
    ``finished_at + result_ttl_s`` has passed; ``GET .../result`` answers ``410 result_expired`` from that
    moment on, whether or not the sweeper ran yet;
  - the audit log: rotated by size, ``audit_backups`` old files kept (``serve_app.service``).

The :class:`Sweeper` runs in every job worker. Several may sweep at once: each delete is idempotent and the
mark that a result is gone (``result_path`` set to NULL) is a guarded update, so the outcome is the same
whoever gets there first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from deployments.contract import TERMINAL_STATUSES

if TYPE_CHECKING:  # the store imports these settings; the sweeper only needs the types
    from serve_app.artifact_backend import ArtifactBackend
    from serve_app.jobs.store import JobStore

logger = logging.getLogger("orfeas.retention")

INPUTS_DIR = "inputs"
RESULTS_DIR = "results"


def input_relpath(job_id: str, image_format: str, view: str | None = None) -> str:
    """Where a job's input lives: ``inputs/<job_id>.png``, a multiview job's other views beside it as
    ``inputs/<job_id>.left.png``. Flat, so that one listing of ``inputs/`` finds every view of every job."""
    name = job_id if view is None else f"{job_id}.{view}"
    return f"{INPUTS_DIR}/{name}.{image_format}"


def input_owner(relpath: str) -> str:
    """The job id of an input file named by :func:`input_relpath` (job ids hold no dot)."""
    return PurePosixPath(relpath).name.split(".", 1)[0]


class RetentionSettings(BaseModel):
    """How long what the service writes is kept."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    result_ttl_s: float | None = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="Results and their converted formats are kept this long after the job finished; "
        "afterwards `GET .../result` answers `410 result_expired` and the sweeper deletes them (null: forever).",
    )
    sweep_interval_s: float = Field(
        300.0, gt=0, description="How often each job worker deletes expired results and orphaned inputs."
    )
    sweep_batch: int = Field(
        500, ge=1, description="Most expired results one sweep deletes (the next sweep takes the rest)."
    )
    orphan_grace_s: float = Field(
        3600.0,
        gt=0,
        description="An input file with no job row, or a leftover temp file, is deleted once this old "
        "(a submission writes its inputs a moment before its job rows).",
    )
    storage_retry_after_s: int = Field(
        30,
        ge=1,
        description="`Retry-After` of `507 insufficient_storage` / `503 storage_unavailable`; also how long a "
        "worker that could not write a result waits before claiming again.",
    )
    audit_max_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, description="The audit file is rotated when it would grow past this size."
    )
    audit_backups: int = Field(
        5, ge=1, le=50, description="Rotated audit files kept (`auth-audit.jsonl.1` ... `.N`); older ones go."
    )

    @property
    def result_ttl(self) -> timedelta | None:
        return None if self.result_ttl_s is None else timedelta(seconds=self.result_ttl_s)


@dataclass(frozen=True)
class SweepReport:
    results: int  # expired results deleted and marked gone (by this sweeper)
    inputs: int  # orphaned input files deleted
    temp_files: int  # leftovers of interrupted atomic writes


class Sweeper:
    """Deletes what retention says is due; :meth:`sweep` is one pass, the worker calls it periodically."""

    def __init__(self, store: JobStore, artifacts: ArtifactBackend, settings: RetentionSettings) -> None:
        self._store = store
        self._artifacts = artifacts
        self.settings = settings

    async def sweep(self) -> SweepReport:
        results = await self._expired_results()
        inputs, temps = await self._orphaned_inputs()
        report = SweepReport(results=results, inputs=inputs, temp_files=temps)
        if results or inputs or temps:
            logger.info("retention sweep: %s", report)
        return report

    async def _expired_results(self) -> int:
        """1. results past their TTL: delete the job's result directory, then mark the row (result_path NULL)."""
        ttl = self.settings.result_ttl
        if ttl is None:
            return 0
        due = await self._store.expired_results(self._store.now() - ttl, self.settings.sweep_batch)
        forgotten = 0
        for job_id, result_path in due:
            # The whole directory: the GLB, its converted formats and files of stale runs of the same job.
            if await asyncio.to_thread(self._artifacts.delete_tree, f"{RESULTS_DIR}/{job_id}"):
                # counted by the one sweeper whose guarded update wins
                forgotten += await self._store.forget_result(job_id, result_path)
        return forgotten

    async def _orphaned_inputs(self) -> tuple[int, int]:
        """2. inputs of terminal jobs (a crash between the transition and the delete) or of no job at all
        (a crash between writing the input and committing the row), and old temp files."""
        entries = await asyncio.to_thread(self._artifacts.list_files, INPUTS_DIR)
        old = time.time() - self.settings.orphan_grace_s
        temps = [e for e in entries if e.temporary and e.mtime < old]
        # a multiview job owns several files here (its image and its other views): each is judged by its job
        inputs = [(input_owner(e.relpath), e) for e in entries if not e.temporary]
        statuses = await self._store.statuses(sorted({job_id for job_id, _ in inputs}))
        doomed = [
            entry
            for job_id, entry in inputs
            if statuses.get(job_id) in TERMINAL_STATUSES or (job_id not in statuses and entry.mtime < old)
        ]
        deleted_inputs = 0
        for entry in doomed:
            deleted_inputs += await asyncio.to_thread(self._artifacts.delete, entry.relpath)
        deleted_temps = 0
        for entry in temps:
            deleted_temps += await asyncio.to_thread(self._artifacts.delete, entry.relpath)
        return deleted_inputs, deleted_temps
