"""Schemathesis against the live app: the document from `<url>/openapi.json`, every request signed.

Each operation gets generated cases, positive (valid per the document) and negative (not), with random path ids
and again with the ids of a real succeeded job and batch (so 200s, downloads and a finished job's event stream
are checked too). Checks: no 5xx, every response conforms to the document (status code, content type, body
schema, headers), and a request the document calls invalid is refused with a 4xx. Bounded and deterministic: a
fixed number of examples per operation, derandomized, no shrinking, no deadline. Nothing is excluded: the event
stream of a finished job ends after one event, and one of an unknown job is a 404, so no stream here runs
forever.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, NegativeDataRejectionConfig
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serve_app.auth.signing import AgentSigner
from tests.client.conftest import LiveApi, serve_api
from tests.serve_app.conftest import png_bytes

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    # a request the document calls invalid gets a 4xx: the documented bounds are no looser than the server's
    negative_data_rejection,
]
MAX_EXAMPLES = 30
PARAMS = {"num_inference_steps": 5, "octree_resolution": 64}
_SIGNED = ("content-digest", "signature-input", "signature")


class SignedRequests(requests.auth.AuthBase):
    """Signs the prepared request (its final method, URL, headers and body bytes) with the SDK's signer."""

    def __init__(self, signer: AgentSigner) -> None:
        self.signer = signer

    def __call__(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        body = prepared.body or b""
        content = body.encode("utf-8") if isinstance(body, str) else body
        assert isinstance(content, bytes), type(content)
        request = httpx.Request(
            str(prepared.method), str(prepared.url), headers=dict(prepared.headers), content=content
        )
        self.signer.sign(request)
        for name in _SIGNED:
            prepared.headers[name] = request.headers[name]
        return prepared


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveApi]:
    with serve_api(tmp_path) as api:
        yield api


def _session(live: LiveApi) -> requests.Session:
    session = requests.Session()
    session.auth = SignedRequests(AgentSigner(live.key_id, live.secret))
    return session


def _real_ids(live: LiveApi) -> dict[str, str]:
    with live.client() as client:
        job = client.submit(png_bytes(), seed=1, params=PARAMS)
        batch = client.submit_batch([png_bytes()], params=PARAMS)
        # dev mode allows loopback receivers; nothing listens there, deliveries just fail and back off
        webhook = client.create_webhook("http://127.0.0.1:9/hook", ["job.succeeded"])
    live.wait_until(job["job_id"], "succeeded", timeout=60)
    live.wait_until(batch["jobs"][0]["job_id"], "succeeded", timeout=60)
    return {"job_id": job["job_id"], "batch_id": batch["batch_id"], "webhook_id": webhook["id"]}


def _run(
    operation: Any, strategy: st.SearchStrategy[Any], session: requests.Session, url: str, seen: list[int]
) -> None:
    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        response = case.call(base_url=url, session=session, timeout=30)
        seen.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    check()


def _modes(definition: dict[str, Any]) -> tuple[GenerationMode, ...]:
    # Only a body, a query or a header can be made invalid: any text is a valid id in the path (and the
    # Signature header is the hook's)
    locations = {parameter["in"] for parameter in definition.get("parameters", ())}
    if "requestBody" in definition or locations - {"path"}:
        return (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    return (GenerationMode.POSITIVE,)


def _load(live: LiveApi) -> Any:
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    # the Signature header is the hook's to write: generated values for it would only be replaced
    schema.config.generation.update(with_security_parameters=False)
    # 413 is this API's documented refusal of too much in one request (a batch over max_batch_items): a rejection
    schema.config.checks.negative_data_rejection = NegativeDataRejectionConfig(
        expected_statuses=[*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]
    )
    return schema


def test_openapi_live_app_conforms_to_its_document(live: LiveApi):
    schema = _load(live)
    session = _session(live)
    ids = _real_ids(live)
    statuses: dict[str, list[int]] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        seen = statuses.setdefault(operation.label, [])
        path_sets: list[dict[str, str] | None] = [None]
        names = {p.name for p in operation.path_parameters}
        if names:
            path_sets.append({name: ids[name] for name in names})
        for mode in _modes(operation.definition.raw):
            for path_parameters in path_sets:
                strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
                try:
                    _run(operation, strategy, session, live.url, seen)
                # collected, so that one run reports every operation's failures
                except (Exception, FailureGroup) as exc:
                    failures.append(f"{operation.label} ({mode.value}, ids={path_parameters}): {exc}")
    assert not failures, "\n\n".join(failures)
    # the signing hook works: signed requests got past the middleware, and real ids reached the handlers
    assert 200 in statuses["GET /api/agent/jobs/{job_id}"]
    assert 200 in statuses["GET /api/agent/jobs/{job_id}/result"]
    assert 200 in statuses["GET /api/agent/jobs/{job_id}/events"]
    assert 200 in statuses["GET /api/agent/batches/{batch_id}"]
    everything = [status for seen in statuses.values() for status in seen]
    assert everything.count(401) < len(everything) // 10, statuses


def test_openapi_live_app_accepts_a_documented_submission(live: LiveApi):
    """A valid JSON and a valid multipart submission, sent as schemathesis cases, are 202s that conform."""
    schema = _load(live)
    session = _session(live)
    operation = schema["/api/agent/jobs"]["POST"]
    image = png_bytes()
    cases = [
        operation.Case(
            body={"image": base64.b64encode(image).decode(), "seed": 7, "params": PARAMS},
            media_type="application/json",
        ),
        operation.Case(body={"image": image, "seed": 8}, media_type="multipart/form-data"),
    ]
    for case in cases:
        response = case.call(base_url=live.url, session=session, timeout=30)
        assert response.status_code == 202, response.text
        case.validate_response(response, checks=CHECKS)
