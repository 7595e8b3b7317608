"""The endpoint benchmark's measuring parts, on in-process ASGI apps (the full run needs Ray: see its --quick)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import httpx
import yaml
from ray.serve.schema import ServeDeploySchema
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from benchmarks.endpoint_latency import (
    NOOP_IMPORT,
    Phase,
    Results,
    closed_loop,
    noop_prefix_of,
    open_loop,
    parse_args,
    report,
    summary_line,
    throughput_ratio,
)
from benchmarks.noop_app import build_noop_http_app
from serve_app.app import OrfeasArgs

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "endpoint_benchmark.yaml"


def _client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench.test")


def _status_app() -> Starlette:
    async def ok(request: Request) -> Response:
        return JSONResponse({"status": "queued"})

    async def busy(request: Request) -> Response:
        return JSONResponse({"code": "busy"}, status_code=503)

    return Starlette(routes=[Route("/ok", ok), Route("/busy", busy)])


async def test_noop_app_answers_every_path_and_method_with_ok():
    async with _client(build_noop_http_app()) as client:
        got = await client.get("/api/agent/jobs/job_123")
        posted = await client.post("/anything/else", content=b"ignored")
    assert (got.status_code, got.json()) == (200, {"ok": True})
    assert (posted.status_code, posted.json()) == (200, {"ok": True})


def test_phase_percentile_counts_a_failed_call_as_infinitely_slow():
    phase = Phase(latencies_ms=[float(ms) for ms in range(1, 100)], errors={"500": 1})
    assert phase.percentile(50) == 50.0
    assert phase.percentile(99) == 99.0
    assert phase.percentile(100) == math.inf
    phase.errors["ReadTimeout"] = 1  # 2 of 100 failed: the p99 is a failure
    assert phase.percentile(99) == math.inf


def test_phase_add_sums_calls_time_and_errors():
    total = Phase()
    total.add(Phase(latencies_ms=[1.0, 2.0], errors={"503": 1}, elapsed_s=1.0))
    total.add(Phase(latencies_ms=[3.0], errors={"503": 2, "500": 1}, elapsed_s=2.0, max_send_lag_ms=4.0))
    assert total.latencies_ms == [1.0, 2.0, 3.0]
    assert total.errors == {"503": 3, "500": 1}
    assert (total.elapsed_s, total.calls_per_s, total.max_send_lag_ms) == (3.0, 1.0, 4.0)


async def test_closed_loop_counts_answered_calls_and_errors_by_status():
    async with _client(_status_app()) as client:
        good = await closed_loop(client, "/ok", 4, 0.2)
        bad = await closed_loop(client, "/busy", 2, 0.1)
    assert good.errors == {} and len(good.latencies_ms) >= 4 and good.elapsed_s >= 0.2
    assert bad.latencies_ms == [] and set(bad.errors) == {"503"} and bad.errors["503"] >= 2


async def test_open_loop_sends_on_schedule_without_waiting_for_answers():
    # every call is held until all ten are in flight: a client that waited for answers would never get there
    arrived, release = 0, asyncio.Event()

    async def held(request: Request) -> Response:
        nonlocal arrived
        arrived += 1
        if arrived == 10:
            release.set()
        await release.wait()
        return JSONResponse({"ok": True})

    async with _client(Starlette(routes=[Route("/held", held)])) as client:
        phase = await asyncio.wait_for(open_loop(client, "/held", rate=100, seconds=0.1), timeout=60)
    assert (len(phase.latencies_ms), phase.errors, arrived) == (10, {}, 10)


async def test_open_loop_latency_counts_the_queue_from_the_scheduled_time():
    # one call at a time, 50 ms each, while 40/s arrive: the 20th is due at 0.475 s and answered no sooner than
    # 1.0 s, so it waited >= 525 ms; timed from its own send it would look like ~50 ms
    lock = asyncio.Lock()

    async def serial(request: Request) -> Response:
        async with lock:
            await asyncio.sleep(0.05)
        return JSONResponse({"ok": True})

    async with _client(Starlette(routes=[Route("/serial", serial)])) as client:
        phase = await open_loop(client, "/serial", rate=40, seconds=0.5)
    assert (len(phase.latencies_ms), phase.errors) == (20, {})
    assert phase.percentile(100) >= 500.0


def _calls(n: int, ms: float = 10.0) -> Phase:
    return Phase(latencies_ms=[ms] * n, elapsed_s=1.0)


def _results() -> Results:
    return Results(
        closed={1: {"signed": _calls(50), "noop": _calls(100)}, 32: {"signed": _calls(80), "noop": _calls(200)}},
        open={"signed": _calls(160, 20.0), "noop": Phase(latencies_ms=[5.0] * 159, errors={"503": 1})},
        rate=32.0,
    )


def test_summary_line_reports_the_ratio_at_the_highest_concurrency():
    results = _results()
    assert throughput_ratio(results.closed[1]) == 0.5
    assert summary_line(results) == (
        "signed_vs_noop=0.40 ratio_concurrency=32 open_loop_32rps_p99_ms=20.0 noop_open_loop_32rps_p99_ms=5.0 "
        "signed_calls_per_s=80 noop_calls_per_s=200"
    )


def test_report_is_a_markdown_table_per_loop_with_the_verdict():
    lines = report(_results(), ["header"]).splitlines()
    assert lines[:4] == [
        "header",
        "",
        "```",
        "| concurrency | app | calls/s | n | p50 ms | p95 ms | p99 ms | errors |",
    ]
    assert "| 32 | signed status | 80 | 80 | 10.0 | 10.0 | 10.0 | 0 |" in lines
    assert "| 32 | signed_vs_noop | 0.40 | | | | | |" in lines
    assert "| 32/s | no-op | 160 | 5.0 | 5.0 | 5.0 | inf | 503: 1 | 0.0 |" in lines
    assert lines[-2:] == [
        "target signed_vs_noop >= 0.7 and open-loop p99 < 50 ms: not met (0.40, 20.0 ms)",
        "```",
    ]


def test_parse_args_quick_is_one_short_level():
    args = parse_args(["--quick"])
    assert (args.concurrency, args.rounds, args.seconds, args.open_seconds, args.rate) == ([32], 1, 3.0, 5.0, 32.0)
    assert args.config == CONFIG and args.url is None


def test_endpoint_benchmark_config_mounts_the_noop_app_beside_the_ingress_without_dispatch():
    config = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(config)
    ingress, noop = config["applications"]
    assert OrfeasArgs.model_validate(ingress["args"]).app.jobs.dispatch is False
    assert (ingress["route_prefix"], noop["route_prefix"], noop["import_path"]) == ("/", "/noop", NOOP_IMPORT)
    assert noop_prefix_of(CONFIG) == "/noop"
    # one proxy for both, off the port a dev server uses
    assert (schema.proxy_location.value, schema.http_options.port) == ("HeadOnly", 8100)
