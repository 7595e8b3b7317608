"""The OpenAPI document: valid 3.1, public, complete over the route table, and stating the configured limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.responses import Response
from starlette.routing import Route

from serve_app.api_models import Capabilities, JobView
from serve_app.config import ApiLimits, AppConfig
from serve_app.http_app import build_http_app
from serve_app.openapi import OPENAPI_ROUTE, SECURITY_SCHEME, Operation, Reply, build_document, register_operation
from serve_app.openapi import OPERATIONS as TABLE
from serve_app.routes import ROUTES
from tests.serve_app.conftest import Api, b64, png_bytes

PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/openapi.json")}


def _document(tmp_path: Path, **limits: Any) -> dict[str, Any]:
    config = AppConfig(mode="dev", data_dir=tmp_path / "data", limits=ApiLimits(**limits))
    return build_document([*ROUTES, OPENAPI_ROUTE], config)


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


async def _unsigned_get(api: Api, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=api.client._transport, base_url="http://testserver") as client:
        return await client.get(path)


async def test_openapi_json_is_public_and_valid_openapi_31(api: Api):
    response = await _unsigned_get(api, "/openapi.json")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema


async def test_openapi_lists_every_route_of_the_app(api: Api):
    document = (await _unsigned_get(api, "/openapi.json")).json()

    app = build_http_app(api.service).app  # inside RequestIdMiddleware: the Starlette app and its routes
    routes = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    assert _operations(document) == routes
    agent = {(method, path) for method, path in _operations(document) if path.startswith("/api/agent/")}
    for route in ROUTES:
        assert isinstance(route, Route)
        if route.path.startswith("/api/agent/"):
            assert {(method, route.path) for method in route.methods or () if method != "HEAD"} <= agent


def test_openapi_security_is_global_and_public_paths_opt_out(tmp_path: Path):
    document = _document(tmp_path)

    scheme = document["components"]["securitySchemes"][SECURITY_SCHEME]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Signature")
    for header in ("RFC 9421", "Signature-Input", "Content-Digest", "keyid", "docs/agent-guide.md"):
        assert header in scheme["description"]
    assert document["security"] == [{SECURITY_SCHEME: []}]
    for method, path in _operations(document):
        operation = document["paths"][path][method.lower()]
        assert ("security" in operation) == ((method, path) in PUBLIC), (method, path)
        if (method, path) in PUBLIC:
            assert operation["security"] == []


def test_openapi_agent_operations_document_auth_errors_with_the_error_body(tmp_path: Path):
    document = _document(tmp_path)
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}

    for path, item in document["paths"].items():
        for operation in item.values():
            responses = operation["responses"]
            if path.startswith("/api/agent/"):
                assert {"400", "401", "403", "413", "429", "503"} <= set(responses), path
            for status, response in responses.items():
                assert response["headers"]["X-Request-ID"] == {"$ref": "#/components/headers/X-Request-ID"}
                if int(status) >= 400:
                    assert response["content"] == {"application/json": {"schema": error_ref}}, (path, status)
    assert document["components"]["headers"]["X-Request-ID"]["required"] is True
    job = document["paths"]["/api/agent/jobs/{job_id}/result"]["get"]["responses"]
    assert {"404", "409", "410", "422"} <= set(job)
    assert "`body_too_large`" in job["413"]["description"]
    submit = document["paths"]["/api/agent/jobs"]["post"]["responses"]
    # a status both the middleware and the handler send lists both's codes
    assert "`image_too_large`" in submit["413"]["description"]
    assert "`body_too_large`" in submit["413"]["description"]
    assert submit["202"]["headers"]["Location"]["required"] is True
    assert "Retry-After" in submit["429"]["headers"]
    assert set(document["paths"]["/api/agent/jobs"]["post"]["requestBody"]["content"]) == {
        "application/json",
        "multipart/form-data",
    }


def test_openapi_limits_follow_the_config(tmp_path: Path):
    document = _document(
        tmp_path, max_octree_resolution=256, min_octree_resolution=64, max_batch_items=5, max_list_page=20
    )
    schemas = document["components"]["schemas"]

    octree = schemas["JobParams"]["properties"]["octree_resolution"]
    assert (octree["minimum"], octree["maximum"]) == (64, 256)
    assert schemas["BatchSubmission"]["properties"]["items"]["maxItems"] == 5
    (limit,) = [p for p in document["paths"]["/api/agent/jobs"]["get"]["parameters"] if p["name"] == "limit"]
    assert limit["schema"]["maximum"] == 20
    # the defaults give other bounds: the document is per configuration
    default = _document(tmp_path)["components"]["schemas"]["JobParams"]["properties"]["octree_resolution"]
    assert default["maximum"] == 384


def test_openapi_route_without_metadata_is_refused(tmp_path: Path):
    async def hidden(request: Any) -> Response:
        return Response()

    config = AppConfig(mode="dev", data_dir=tmp_path / "data")
    with pytest.raises(LookupError, match="GET /api/agent/hidden has no OpenAPI metadata"):
        build_document([*ROUTES, Route("/api/agent/hidden", hidden, methods=["GET"])], config)


def test_openapi_register_operation_adds_a_route(tmp_path: Path):
    async def extra(request: Any) -> Response:
        return Response()

    operation = Operation("Extra", "extra", "extra", {204: Reply("Nothing.", None)})
    register_operation("get", "/api/agent/extra", operation)
    try:
        config = AppConfig(mode="dev", data_dir=tmp_path / "data")
        document = build_document([*ROUTES, Route("/api/agent/extra", extra, methods=["GET"])], config)
    finally:
        del TABLE[("GET", "/api/agent/extra")]
    assert document["paths"]["/api/agent/extra"]["get"]["operationId"] == "extra"
    assert "401" in document["paths"]["/api/agent/extra"]["get"]["responses"]
    validate(document)


async def test_openapi_models_read_the_servers_bodies(api: Api):
    """The response models parse what the handlers send (schemathesis checks this too, over generated cases)."""
    capabilities = (await api.client.get("/api/agent/capabilities")).json()
    Capabilities.model_validate(capabilities)
    submitted = await api.client.post(
        "/api/agent/jobs", json={"image": b64(png_bytes()), "params": {"num_inference_steps": 5}}
    )
    assert submitted.status_code == 202
    JobView.model_validate(submitted.json())
    JobView.model_validate(await api.wait_finished(submitted.json()["job_id"]))
