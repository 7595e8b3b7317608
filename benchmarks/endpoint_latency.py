"""Latency of signed agent calls against a running app: submit (POST /api/agent/jobs) and status
(GET /api/agent/jobs/{id}) at 1, 8, 32 and 64 concurrent agents.

Each agent is an asyncio task with its own signed httpx client (real HMAC signatures, fresh nonces), so
the numbers include signing, the Serve proxy, signature verification with its database round trips,
validation and the job store. Jobs go to the real queue: pass --cancel (default) to cancel them right
away so the model does not pile up work, and give the app a queue big enough for the run.

    make serve   # in another terminal (the embedded default)
    .venv/bin/python benchmarks/endpoint_latency.py --key-file .orfeas/dev-agent.json

The last line is machine-readable: `p99_ms_max=<..> submit_p99_ms=<..> status_p99_ms=<..>` over all levels.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from serve_app.auth.signing import AgentSigner  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--key-file", type=Path, default=Path(".orfeas/dev-agent.json"))
    p.add_argument("--url", help="default: the key file's url")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--requests", type=int, default=400, help="calls of each kind per concurrency level")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--no-cancel", dest="cancel", action="store_false", help="leave submitted jobs queued")
    return p.parse_args()


def tiny_png() -> str:
    buf = io.BytesIO()
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (32, 32), (200, 30, 30, 255)), (16, 16))
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def timed(coro) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = await coro
    return (time.perf_counter() - started) * 1000, response


async def run_level(url: str, key: dict, concurrency: int, total: int, image: str, cancel: bool) -> dict:
    body = {"image": image, "params": {"num_inference_steps": 1, "octree_resolution": 32}}
    submit_ms: list[float] = []
    status_ms: list[float] = []
    errors: dict[int, int] = {}
    job_ids: list[str] = []
    per_agent = max(1, total // concurrency)
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)

    async def agent() -> None:
        async with httpx.AsyncClient(
            base_url=url, auth=AgentSigner(key["key_id"], key["secret"]), timeout=30, limits=limits
        ) as client:
            for _ in range(per_agent):
                ms, response = await timed(client.post("/api/agent/jobs", json=body))
                if response.status_code != 202:
                    errors[response.status_code] = errors.get(response.status_code, 0) + 1
                    continue
                submit_ms.append(ms)
                job_id = response.json()["job_id"]
                job_ids.append(job_id)
                ms, response = await timed(client.get(f"/api/agent/jobs/{job_id}"))
                if response.status_code == 200:
                    status_ms.append(ms)
                else:
                    errors[response.status_code] = errors.get(response.status_code, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(agent() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    if cancel:
        async with httpx.AsyncClient(base_url=url, auth=AgentSigner(key["key_id"], key["secret"]), timeout=30) as c:
            for start in range(0, len(job_ids), 16):
                await asyncio.gather(*(c.delete(f"/api/agent/jobs/{j}") for j in job_ids[start : start + 16]))
    return {
        "concurrency": concurrency,
        "submit": submit_ms,
        "status": status_ms,
        "errors": errors,
        "throughput": (len(submit_ms) + len(status_ms)) / wall,
    }


def row(name: str, values: list[float]) -> str:
    if not values:
        return f"| {name} | 0 | - | - | - | - |"
    return (
        f"| {name} | {len(values)} | {statistics.median(values):.1f} | {percentile(values, 95):.1f} | "
        f"{percentile(values, 99):.1f} | {max(values):.1f} |"
    )


async def main() -> None:
    args = parse_args()
    key = json.loads(args.key_file.read_text())
    url = args.url or key["url"]
    image = tiny_png()
    print(f"target {url}; machine {platform.machine()}, python {platform.python_version()}")
    await run_level(url, key, 1, args.warmup, image, args.cancel)  # warm connections, caches, JIT paths
    worst = {"submit": 0.0, "status": 0.0}
    print("| concurrency | call | n | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for level in args.concurrency:
        result = await run_level(url, key, level, args.requests, image, args.cancel)
        for call in ("submit", "status"):
            print(f"| {level} " + row(call, result[call]))
            if result[call]:
                worst[call] = max(worst[call], percentile(result[call], 99))
        if result["errors"]:
            print(f"|   | errors | {result['errors']} | | | | |")
        print(f"|   | throughput | {result['throughput']:.0f} calls/s | | | | |", flush=True)
    print(
        f"p99_ms_max={max(worst.values()):.1f} submit_p99_ms={worst['submit']:.1f} status_p99_ms={worst['status']:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
