"""Signed status calls against a no-op app on the same Serve proxy, side by side, in one run.

    .venv/bin/python benchmarks/endpoint_latency.py           # ~2 min of measuring, ~2.5 min in all
    .venv/bin/python benchmarks/endpoint_latency.py --quick   # smoke run, ~20 s of measuring, ~1 min in all

Without `--url` it starts everything itself: a local Ray and Serve on a free port with
`configs/endpoint_benchmark.yaml` (the ingress app with the dispatcher off at `/`, the no-op Starlette app of
`benchmarks/noop_app.py` at `/noop`, both behind the SAME proxy), data in a fresh temp directory; it stops
them at the end. With `--url` it targets an app already running that config (`serve run`).

1. One job is submitted; (a) is `GET /api/agent/jobs/{id}` of it, (b) the same path under the no-op prefix.
2. Closed loop: at each concurrency, C agents call back to back for `--seconds`; (a) and (b) alternate
   `--rounds` times (a b, b a, ...) so machine noise hits both. `signed_vs_noop` is (a) calls/s over (b)
   calls/s at the highest concurrency (the saturated one).
3. Open loop: `--rate` calls/s of (a) for `--open-seconds`, sent on a fixed schedule without waiting for
   answers, latency from the SCHEDULED send time (so a queue in front of a slow server is counted, not
   hidden); then the same for (b), for scale.

Every call of both kinds is really signed (fresh nonce, HMAC, Content-Digest) by the same client, so the
client's own cost is the same on both sides and the ratio is the cost of the app; `--unsigned-noop` sends
(b) unsigned instead. The client is one asyncio process (httpx, keep-alive) on the same cores as the
proxy and the replicas: the numbers are this machine's, to be compared within one run.

It prints a markdown block to paste into `benchmarks/results/endpoint_latency_cpu.md`; the last line is
machine-readable: `signed_vs_noop=<..> ratio_concurrency=<C> open_loop_<rate>rps_p99_ms=<..> ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from serve_app.auth.signing import AgentSigner  # noqa: E402

CONFIG = REPO / "configs" / "endpoint_benchmark.yaml"
INGRESS_IMPORT = "serve_app.app:build_app"
NOOP_IMPORT = "benchmarks.noop_app:app"
TARGET_RATIO, TARGET_P99_MS = 0.7, 50.0  # issue 9, item 9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="target a running app (configs/endpoint_benchmark.yaml); default: start one")
    p.add_argument("--key-file", type=Path, default=Path(".orfeas-bench/dev-agent.json"), help="with --url")
    p.add_argument("--noop-prefix", default=None, help="route prefix of the no-op app (default: from the config)")
    p.add_argument("--config", type=Path, default=CONFIG, help="Serve config to start without --url")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=5.0, help="length of one closed-loop phase")
    p.add_argument("--rounds", type=int, default=2, help="(a, b) pairs per concurrency, order alternating")
    p.add_argument("--rate", type=float, default=32.0, help="open-loop arrivals per second")
    p.add_argument("--open-seconds", type=float, default=30.0, help="length of each open-loop run")
    p.add_argument("--warmup", type=float, default=2.0, help="untimed seconds of each kind first")
    p.add_argument("--unsigned-noop", action="store_true", help="send the no-op calls without signatures")
    p.add_argument("--quick", action="store_true", help="smoke run: C=32, one round of 3 s, open loop 5 s")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for the apps to run")
    args = p.parse_args(argv)
    args.config = args.config.resolve()  # the local start changes into the repository
    if args.quick:
        args.concurrency, args.seconds, args.rounds, args.open_seconds, args.warmup = [32], 3.0, 1, 5.0, 1.0
    return args


# --- measuring ------------------------------------------------------------------------------------------


@dataclass
class Phase:
    """Calls of one kind: latencies of the good ones, counts of the others, over ``elapsed_s``."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    max_send_lag_ms: float = 0.0  # open loop: how late the client itself sent (a busy client shows here)

    def add(self, other: Phase) -> None:
        self.latencies_ms += other.latencies_ms
        for reason, count in other.errors.items():
            self.errors[reason] = self.errors.get(reason, 0) + count
        self.elapsed_s += other.elapsed_s
        self.max_send_lag_ms = max(self.max_send_lag_ms, other.max_send_lag_ms)

    @property
    def calls_per_s(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s if self.elapsed_s else 0.0

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile; a failed call counts as infinitely slow (a fast 500 is not a fast call)."""
        failed = sum(self.errors.values())
        values = sorted(self.latencies_ms) + [math.inf] * failed
        if not values:
            return math.nan
        return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


def _record(phase: Phase, started: float, response: httpx.Response | BaseException) -> None:
    if isinstance(response, httpx.Response) and response.status_code == 200:
        phase.latencies_ms.append((time.perf_counter() - started) * 1000)
        return
    reason = str(response.status_code) if isinstance(response, httpx.Response) else type(response).__name__
    phase.errors[reason] = phase.errors.get(reason, 0) + 1


async def _call(client: httpx.AsyncClient, path: str) -> httpx.Response | BaseException:
    try:
        response = await client.get(path)
        await response.aclose()
        return response
    except httpx.HTTPError as exc:
        return exc


async def closed_loop(client: httpx.AsyncClient, path: str, concurrency: int, seconds: float) -> Phase:
    """``concurrency`` agents, each sending its next call when the last one answered, for ``seconds``."""
    phase = Phase()
    started = time.perf_counter()
    deadline = started + seconds

    async def agent() -> None:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            _record(phase, sent, await _call(client, path))

    await asyncio.gather(*(agent() for _ in range(concurrency)))
    phase.elapsed_s = time.perf_counter() - started
    return phase


async def open_loop(client: httpx.AsyncClient, path: str, rate: float, seconds: float) -> Phase:
    """Call ``i`` is due at ``start + i / rate`` whatever the earlier ones are doing; latency from that time."""
    phase = Phase()
    calls: list[asyncio.Task[None]] = []

    async def one(due: float) -> None:
        _record(phase, due, await _call(client, path))

    start = time.perf_counter()
    for i in range(max(1, round(rate * seconds))):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        phase.max_send_lag_ms = max(phase.max_send_lag_ms, (time.perf_counter() - due) * 1000)
        calls.append(asyncio.create_task(one(due)))
    await asyncio.gather(*calls)
    phase.elapsed_s = time.perf_counter() - start
    return phase


# --- the two targets ------------------------------------------------------------------------------------


@dataclass
class Target:
    url: str
    key_id: str
    secret: str
    noop_prefix: str


def tiny_png() -> str:
    buf = io.BytesIO()
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (32, 32), (200, 30, 30, 255)), (16, 16))
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def make_client(target: Target, *, signed: bool) -> httpx.AsyncClient:
    # more connections than any level or open-loop backlog needs: a call never waits for the pool unseen
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    auth = AgentSigner(target.key_id, target.secret) if signed else None
    return httpx.AsyncClient(base_url=target.url, auth=auth, timeout=30, limits=limits)


async def submit_job(client: httpx.AsyncClient) -> str:
    body = {"image": tiny_png(), "params": {"num_inference_steps": 1, "octree_resolution": 32}}
    response = await client.post("/api/agent/jobs", json=body)
    if response.status_code != 202:
        raise SystemExit(f"submitting the job to read failed: {response.status_code} {response.text}")
    return str(response.json()["job_id"])


# --- starting a local Serve -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _app(config: dict[str, Any], import_path: str) -> dict[str, Any]:
    try:
        return next(app for app in config["applications"] if app["import_path"] == import_path)
    except StopIteration:
        raise SystemExit(f"the config has no application with import_path {import_path}") from None


def noop_prefix_of(config_path: Path) -> str:
    return str(_app(yaml.safe_load(config_path.read_text()), NOOP_IMPORT)["route_prefix"])


@contextmanager
def local_serve(config_path: Path, timeout_s: float) -> Iterator[Target]:
    """Ray + Serve with ``config_path`` as `serve run` would deploy it, on a free port, data in a temp dir."""
    import ray
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(config_path.read_text())
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    config["http_options"]["port"] = port
    with tempfile.TemporaryDirectory(prefix="orfeas-bench-") as data_dir:
        app_args = _app(config, INGRESS_IMPORT)["args"]["app"]
        app_args.update(data_dir=data_dir, public_url=url)  # a fresh database: no nonces of earlier runs
        schema = ServeDeploySchema.model_validate(config)
        # Ray workers import the project from the driver's working directory (benchmarks.noop_app too)
        os.chdir(REPO)
        # logical CPUs only (no pinning): four, so every replica of the config fits on a 2-core box
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(
                proxy_location=schema.proxy_location,
                http_options=schema.http_options.model_dump(),
                # the config's controller environment (FORWARDED_ALLOW_IPS) reaches the proxy and replicas
                controller_options=config.get("controller_options"),
            )
            # what `serve run <config>` does, so the config's deployment options apply exactly as there
            client = serve.context._get_global_client()
            if client is None:
                raise SystemExit("serve.start() left no Serve client")
            client.deploy_apps(schema)
            _wait_running([app.name for app in schema.applications], timeout_s)
            key = json.loads((Path(data_dir) / "dev-agent.json").read_text())
            yield Target(url, key["key_id"], key["secret"], noop_prefix_of(config_path))
        finally:
            serve.shutdown()
            ray.shutdown()


def _wait_running(names: list[str], timeout_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        states = {name: str(apps[name].status) if name in apps else "NOT_STARTED" for name in names}
        failed = [name for name, state in states.items() if "DEPLOY_FAILED" in state]
        if failed:
            raise SystemExit(f"{failed} failed to deploy: {apps[failed[0]].message}")
        if all(state.endswith("RUNNING") for state in states.values()):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"apps not running after {timeout_s:.0f} s: {states}")
        time.sleep(0.5)


# --- the run --------------------------------------------------------------------------------------------


@dataclass
class Results:
    closed: dict[int, dict[str, Phase]]  # concurrency -> kind ("signed", "noop") -> phases summed
    open: dict[str, Phase]
    rate: float

    @property
    def ratio_concurrency(self) -> int:
        return max(self.closed)

    def ratio(self, concurrency: int) -> float:
        return throughput_ratio(self.closed[concurrency])


def throughput_ratio(kinds: dict[str, Phase]) -> float:
    """Signed calls/s over no-op calls/s (the same concurrency)."""
    noop = kinds["noop"].calls_per_s
    return kinds["signed"].calls_per_s / noop if noop else math.nan


async def measure(target: Target, args: argparse.Namespace) -> Results:
    async with make_client(target, signed=True) as signed, make_client(target, signed=not args.unsigned_noop) as noop:
        job_id = await submit_job(signed)
        path = f"/api/agent/jobs/{job_id}"
        kinds = {"signed": (signed, path), "noop": (noop, target.noop_prefix.rstrip("/") + path)}
        for kind, (client, kind_path) in kinds.items():
            probe = await _call(client, kind_path)
            if not isinstance(probe, httpx.Response) or probe.status_code != 200:
                raise SystemExit(f"{kind} probe GET {kind_path} failed: {probe!r}")
            await closed_loop(client, kind_path, 4, args.warmup)  # connections, caches, first-call paths

        closed: dict[int, dict[str, Phase]] = {}
        for concurrency in args.concurrency:
            closed[concurrency] = {"signed": Phase(), "noop": Phase()}
            for round_ in range(args.rounds):
                for kind in ("signed", "noop") if round_ % 2 == 0 else ("noop", "signed"):
                    client, kind_path = kinds[kind]
                    closed[concurrency][kind].add(await closed_loop(client, kind_path, concurrency, args.seconds))
            ratio = throughput_ratio(closed[concurrency])
            print(f"closed loop C={concurrency}: signed_vs_noop {ratio:.2f}", file=sys.stderr, flush=True)
        opened = {}
        for kind in ("signed", "noop"):
            client, kind_path = kinds[kind]
            opened[kind] = await open_loop(client, kind_path, args.rate, args.open_seconds)
        return Results(closed, opened, args.rate)


# --- the report -----------------------------------------------------------------------------------------

LABELS = {"signed": "signed status", "noop": "no-op"}


def _ms(value: float) -> str:
    return f"{value:.1f}" if math.isfinite(value) else str(value)


def _errors(phase: Phase) -> str:
    return ", ".join(f"{reason}: {count}" for reason, count in sorted(phase.errors.items())) or "0"


def report(results: Results, header: list[str]) -> str:
    lines = [*header, "", "```", "| concurrency | app | calls/s | n | p50 ms | p95 ms | p99 ms | errors |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for concurrency, kinds in results.closed.items():
        for kind, phase in kinds.items():
            lines.append(
                f"| {concurrency} | {LABELS[kind]} | {phase.calls_per_s:.0f} | {len(phase.latencies_ms)} | "
                f"{_ms(phase.percentile(50))} | {_ms(phase.percentile(95))} | {_ms(phase.percentile(99))} | "
                f"{_errors(phase)} |"
            )
        lines.append(f"| {concurrency} | signed_vs_noop | {results.ratio(concurrency):.2f} | | | | | |")
    lines += ["", "| open loop | app | sent | p50 ms | p95 ms | p99 ms | max ms | errors | client lag max ms |"]
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for kind, phase in results.open.items():
        sent = len(phase.latencies_ms) + sum(phase.errors.values())
        lines.append(
            f"| {results.rate:g}/s | {LABELS[kind]} | {sent} | {_ms(phase.percentile(50))} | "
            f"{_ms(phase.percentile(95))} | {_ms(phase.percentile(99))} | {_ms(phase.percentile(100))} | "
            f"{_errors(phase)} | {phase.max_send_lag_ms:.1f} |"
        )
    lines += ["", verdict(results), "```"]
    return "\n".join(lines)


def summary_line(results: Results) -> str:
    c = results.ratio_concurrency
    signed, noop = results.open["signed"], results.open["noop"]
    rate = f"{results.rate:g}"
    return (
        f"signed_vs_noop={results.ratio(c):.2f} ratio_concurrency={c} "
        f"open_loop_{rate}rps_p99_ms={_ms(signed.percentile(99))} "
        f"noop_open_loop_{rate}rps_p99_ms={_ms(noop.percentile(99))} "
        f"signed_calls_per_s={results.closed[c]['signed'].calls_per_s:.0f} "
        f"noop_calls_per_s={results.closed[c]['noop'].calls_per_s:.0f}"
    )


def verdict(results: Results) -> str:
    ratio, p99 = results.ratio(results.ratio_concurrency), results.open["signed"].percentile(99)
    met = ratio >= TARGET_RATIO and p99 < TARGET_P99_MS
    return (
        f"target signed_vs_noop >= {TARGET_RATIO} and open-loop p99 < {TARGET_P99_MS:g} ms: "
        f"{'met' if met else 'not met'} ({ratio:.2f}, {_ms(p99)} ms)"
    )


def run(args: argparse.Namespace, target: Target, how: str) -> tuple[str, str]:
    """Measures ``target``; returns the markdown report and the machine-readable summary line."""
    import ray

    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = asyncio.run(measure(target, args))
    load_after = os.getloadavg()
    header = [
        f"Run {started}; {how}; machine {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, Ray {ray.__version__}.",
        f"Load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after. "
        f"Closed loop: {args.rounds} x {args.seconds:g} s of each app per concurrency, alternating; "
        f"open loop: {args.rate:g} calls/s for {args.open_seconds:g} s each; "
        f"no-op calls {'unsigned' if args.unsigned_noop else 'signed'}.",
        "",
        "```",
        " ".join([".venv/bin/python", "benchmarks/endpoint_latency.py", *sys.argv[1:]]),
        "```",
    ]
    return report(results, header), summary_line(results)


def main() -> None:
    args = parse_args()
    if args.url:
        key = json.loads(args.key_file.read_text())
        noop_prefix = args.noop_prefix or noop_prefix_of(args.config)
        text, summary = run(args, Target(args.url, key["key_id"], key["secret"], noop_prefix), f"target {args.url}")
    else:
        with local_serve(args.config, args.startup_timeout) as target:
            if args.noop_prefix:
                target.noop_prefix = args.noop_prefix
            config = args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config
            text, summary = run(args, target, f"local Serve with {config} on {target.url}")
    # printed once Ray is down, so its shutdown messages cannot come after the machine-readable line
    print(text)
    print(summary, flush=True)


if __name__ == "__main__":
    main()
