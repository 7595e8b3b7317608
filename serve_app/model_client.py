"""The dispatcher's model call over Ray Serve: one job -> one ``ShapeGenerator.generate`` call.

Translates between the job world (``serve_app.jobs``: bytes in, mesh out, ``GenerationError`` with a
retryable flag) and the deployment's messages (``deployments.messages``). The deployment batches the
concurrent calls that the dispatcher makes; this adapter stays one call per job.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle

from deployments import messages
from serve_app.jobs import GenerationError, GenerationRequest, MeshResult

logger = logging.getLogger("orfeas.model")


class ShapeGeneratorClient:
    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    async def __call__(self, request: GenerationRequest) -> MeshResult:
        try:
            model_request = messages.GenerationRequest(
                image=request.image, seed=request.seed, params=dict(request.params),
                priority=request.priority,  # type: ignore[arg-type]
                job_id=request.job_id,
            )  # fmt: skip
        except (TypeError, ValueError) as exc:  # params were checked at submit; a config change can still bite
            raise GenerationError("invalid_request", str(exc), retryable=False) from None
        response = self._handle.generate.remote(model_request)
        try:
            outcome = await response
        except asyncio.CancelledError:
            # cancelling our await alone would leave the model working for nobody
            response.cancel()
            raise
        except RayError as exc:
            logger.warning("model call for job %s failed: %s", request.job_id, exc)
            raise GenerationError("model_unavailable", f"the model replica failed: {type(exc).__name__}",
                                  retryable=True) from None
        if isinstance(outcome, messages.GenerationError):
            raise GenerationError(outcome.code, outcome.message, retryable=outcome.retryable)
        timings: dict[str, Any] = {f"{stage}_s": seconds for stage, seconds in outcome.timings.items()}
        timings.update(batch_size=outcome.batch_size, queue_wait_s=outcome.queue_wait_s)
        return MeshResult(vertices=outcome.vertices, faces=outcome.faces, timings=timings)
