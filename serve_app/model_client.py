"""The job worker's model calls over Ray Serve: one job -> one ``generate`` call on its model's ShapeGenerator.

The request and its outcome are the contract types (``deployments.contract``) both sides share; this
adapter only adds what a remote call needs: cancelling the model's work when the job is abandoned, and
telling a lost replica (requeue the job) from everything else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from ray.exceptions import RayActorError
from ray.serve.exceptions import DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments.contract import GenerationRequest, Outcome
from serve_app.jobs.dispatcher import GenerateFn, ModelUnavailable

logger = logging.getLogger("orfeas.model")

# The replica died (ActorDiedError) or is unreachable (ActorUnavailableError), both RayActorErrors, or the
# deployment has no replica that can take the call: the request never got an answer of its own. Anything
# else (e.g. RayTaskError: generate() itself raised) is a bug and fails the job as internal_error.
_LOST_REPLICA = (RayActorError, DeploymentUnavailableError)


class ShapeGeneratorClient:
    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    async def __call__(self, request: GenerationRequest) -> Outcome:
        response = self._handle.generate.remote(request)
        try:
            outcome: Outcome = await response
        except asyncio.CancelledError:
            # cancelling our await alone would leave the model working for nobody
            response.cancel()
            raise
        except _LOST_REPLICA as exc:
            logger.warning("model call for job %s lost its replica: %s", request.job_id, exc)
            raise ModelUnavailable(f"the model replica failed: {type(exc).__name__}") from None
        return outcome


def model_calls(handles: Mapping[str, DeploymentHandle]) -> dict[str, GenerateFn]:
    """Model name -> the call of its ShapeGenerator deployment, for the dispatcher."""
    return {name: ShapeGeneratorClient(handle) for name, handle in handles.items()}
