"""Client throughput: `generate` against an instant OpenAI-compatible server, vs a plain load generator.

    python benchmarks/generate_bench.py                       # 64, 256, 1024 requests in flight
    python benchmarks/generate_bench.py --concurrency 64 --requests 2000 --json out.json

In one run: starts a server in its own process that answers every chat request at once with a fixed
completion (a bare ASGI app under uvicorn, so the server is as cheap as it gets). Then, for each concurrency:
  - ceiling: a plain asyncio + httpx load generator posts the same requests and only checks the status:
    the most requests/s this server gives any Python client on this machine;
  - generate: `generate_traces` with `max_concurrency` = that concurrency writes every trace to JSONL
    (parsing, Trace records, flushed appends, resume bookkeeping, the endpoint pool).
Each is run --repeat times, alternating, and the best kept (this machine's neighbours make single runs vary
by 20%). Prints requests/s of both, their ratio (goal: generate >= 95% of the ceiling), and the CPU time
per request of each (this process's user + system time over the run, divided by the requests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SERVER = r"""
import json, sys, uvicorn
BODY = json.dumps({"id": "x", "object": "chat.completion", "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "42",
    "reasoning_content": "six times seven"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 8}}).encode()
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", backlog=4096)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.post(url, json={}, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the bench server did not start")


async def ceiling(url: str, n_requests: int, concurrency: int) -> float:
    """Requests/s of a plain client: post, check the status, nothing else."""
    body = {"model": "bench", "messages": [{"role": "user", "content": "What is 6 * 7?"}], "n": 1}
    todo = iter(range(n_requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def worker() -> None:
            for _ in todo:
                r = await client.post(url, json=body)
                assert r.status_code == 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n_requests / (time.perf_counter() - start)


def ours(base_url: str, n_requests: int, concurrency: int, tmp: Path) -> tuple[float, float]:
    """(requests/s, CPU ms per request) of generate_traces writing every trace."""
    from branchmerge.records import Problem
    from branchmerge.teachers.client import TeacherConfig, generate_traces

    problems = [
        Problem(id=f"p{i}", domain="bench", question=f"What is {i} * 7?", reference=str(7 * i))
        for i in range(n_requests)
    ]
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "traces.jsonl"
    teacher = TeacherConfig(name="bench", base_url=base_url, model="bench", max_concurrency=concurrency)
    cpu0, t0 = os.times(), time.perf_counter()
    summary = generate_traces(problems, teacher, out, max_tokens=16, show_progress=False)
    wall, cpu1 = time.perf_counter() - t0, os.times()
    assert summary.requests == n_requests and summary.errors == 0, summary
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return n_requests / wall, 1000 * cpu / n_requests


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", default="64,256,1024")
    p.add_argument("--requests", type=int, default=4000, help="requests per measurement")
    p.add_argument("--repeat", type=int, default=2, help="alternating runs of each; the best is kept")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    rows = []
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        wait_up(base_url + "/chat/completions")
        asyncio.run(ceiling(base_url + "/chat/completions", 500, 64))  # warm up both sides
        with tempfile.TemporaryDirectory() as tmp:
            for c in (int(x) for x in args.concurrency.split(",")):
                plain, gen = [], []  # (req/s, CPU ms per request), alternating, best of --repeat each
                for r in range(args.repeat):
                    cpu0 = os.times()
                    top = asyncio.run(ceiling(base_url + "/chat/completions", args.requests, c))
                    cpu1 = os.times()
                    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
                    plain.append((top, 1000 * cpu / args.requests))
                    gen.append(ours(base_url, args.requests, c, Path(tmp) / f"{c}-{r}"))
                (top, top_cpu), (rps, cpu_ms) = max(plain), max(gen)
                rows.append(
                    {
                        "concurrency": c,
                        "requests": args.requests,
                        "ceiling_rps": top,
                        "generate_rps": rps,
                        "ratio": rps / top,
                        "ceiling_cpu_ms_per_request": top_cpu,
                        "generate_cpu_ms_per_request": cpu_ms,
                        "all_ceiling_rps": [x for x, _ in plain],
                        "all_generate_rps": [x for x, _ in gen],
                    }
                )
                print(
                    f"concurrency {c:5}: ceiling {top:6.0f} req/s, generate {rps:6.0f} req/s "
                    f"({rps / top:5.1%} of the ceiling; goal >= 95%); CPU per request: generate "
                    f"{cpu_ms:.2f} ms, plain client {top_cpu:.2f} ms",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait()
    if args.json:
        args.json.write_text(json.dumps({"load_1m": os.getloadavg()[0], "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
