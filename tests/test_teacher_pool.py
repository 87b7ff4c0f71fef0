"""Teachers at scale: endpoint pools, rate limits, paused endpoints, several teachers, --retry-errors, dry run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, Trace, read_jsonl
from branchmerge.teachers.client import TeacherConfig, plan_generation
from branchmerge.teachers.config import load_teachers
from branchmerge.teachers.pool import EndpointPool, TokenBucket
from branchmerge.teachers.serve import running_app
from test_client import PROBLEMS, fake_openai, ok, run


def _answer(_c: int, body: dict[str, Any]) -> JSONResponse:
    return ok(body, {"role": "assistant", "content": "x"})


def test_pool_spreads_requests_over_endpoints_by_load(tmp_path: Path) -> None:
    app_a, calls_a = fake_openai(_answer)
    app_b, calls_b = fake_openai(_answer)
    with running_app(app_a) as a, running_app(app_b) as b:
        cfg = TeacherConfig(name="t", base_url=[f"{a}/v1", f"{b}/v1"], model="m", max_concurrency=2)
        s = run(cfg, tmp_path / "t.jsonl", n=1)
    assert len(calls_a) + len(calls_b) == s.requests == 6
    assert len(calls_a) >= 2 and len(calls_b) >= 2  # both used, neither starved
    assert len(read_jsonl(tmp_path / "t.jsonl", Trace)) == 6


def test_failing_endpoint_is_paused_and_the_healthy_one_takes_the_work(tmp_path: Path) -> None:
    bad, bad_calls = fake_openai(lambda _c, _b: JSONResponse({"error": {"message": "no"}}, status_code=500))
    good, good_calls = fake_openai(_answer)
    problems = [p.model_copy(update={"id": f"q{i}-{p.id}"}) for i in range(4) for p in PROBLEMS]
    with running_app(bad) as b, running_app(good) as g:
        cfg = TeacherConfig(
            name="t",
            base_url=[f"{b}/v1", f"{g}/v1"],
            model="m",
            max_concurrency=1,
            max_retries=0,
            pause_after=1,
            pause_s=60,
        )
        s = run(cfg, tmp_path / "t.jsonl", problems=problems, n=1, temperatures=(0.6,))
    assert len(bad_calls) == 1  # one failure, then paused for the rest of the run
    assert s.errors == 1 and len(good_calls) == 11


def test_requests_per_minute_limit_spaces_requests(tmp_path: Path) -> None:
    app, calls = fake_openai(_answer)
    with running_app(app) as root:
        # 120/min = one every 0.5 s once the bucket's initial burst (capacity 120) is spent: drain it first
        cfg = TeacherConfig(name="t", base_url=f"{root}/v1", model="m", requests_per_min=120)
        pool = EndpointPool(cfg.urls, 8, requests_per_min=120)
        assert pool.requests is not None
        pool.requests.level = 0.0
        start = time.monotonic()

        async def three() -> None:
            for _ in range(3):
                endpoint = await pool.acquire()
                await pool.release(endpoint, ok=True)

        asyncio.run(three())
    assert time.monotonic() - start >= 1.3  # 3 requests at 2/s from an empty bucket


def test_token_bucket_is_corrected_by_real_usage() -> None:
    bucket = TokenBucket(600)  # 10 per second
    bucket.take(600)
    assert bucket.wait_s(100) == pytest.approx(10, abs=0.1)
    bucket.give_back(300)  # the request used less than it reserved
    assert bucket.wait_s(100) == 0
    assert bucket.wait_s(10_000) == pytest.approx((600 - 300) / 10, abs=0.1)  # capped at a full bucket


def test_two_teachers_write_their_own_keys_into_one_file(tmp_path: Path) -> None:
    app_a, calls_a = fake_openai(_answer)
    app_b, calls_b = fake_openai(_answer)
    with running_app(app_a) as a, running_app(app_b) as b:
        teachers = [
            TeacherConfig(name="A", base_url=f"{a}/v1", model="m", price_prompt=1, price_completion=2),
            TeacherConfig(name="B", base_url=f"{b}/v1", model="m"),
        ]
        s = run(teachers, tmp_path / "t.jsonl")
    traces = read_jsonl(tmp_path / "t.jsonl", Trace)
    assert len({t.key for t in traces}) == len(traces) == 24
    assert {t.teacher for t in traces} == {"A", "B"} and len(calls_a) == len(calls_b) == 6
    a = s.teachers["A"]
    assert a.cost_usd == pytest.approx((a.prompt_tokens * 1 + a.completion_tokens * 2) / 1e6)
    assert s.teachers["B"].cost_usd is None and s.requests == 12


def test_retry_errors_resends_only_failed_keys_and_leaves_no_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    flaky, _ = fake_openai(
        lambda c, b: JSONResponse({"error": {"message": "bad"}}, status_code=400) if c % 2 else _answer(c, b)
    )
    with running_app(flaky) as root:
        cfg = TeacherConfig(name="t", base_url=f"{root}/v1", model="m", max_concurrency=1)
        first = run(cfg, out, n=1)
    assert first.errors == 3 and first.traces == 6
    assert plan_generation(PROBLEMS, cfg, out, n=1, temperatures=(0.6, 1.0)).get("t").requests == 0
    assert (
        plan_generation(PROBLEMS, cfg, out, n=1, temperatures=(0.6, 1.0), retry_errors=True)["t"].requests
        == 3
    )
    good, calls = fake_openai(_answer)
    with running_app(good) as root:
        cfg = cfg.model_copy(update={"base_url": f"{root}/v1"})
        again = run(cfg, out, n=1, retry_errors=True)
    traces = read_jsonl(out, Trace)
    assert len(calls) == 3 and again.retried_errors == 3
    assert len(traces) == len({t.key for t in traces}) == 6 and all(t.error is None for t in traces)


def test_dry_run_counts_requests_tokens_and_cost_without_sending(tmp_path: Path) -> None:
    cfg = TeacherConfig(
        name="t", base_url="http://127.0.0.1:9/v1", model="m", price_prompt=3, price_completion=15
    )
    plans = plan_generation(
        PROBLEMS, cfg, tmp_path / "none.jsonl", n=4, temperatures=(0.6, 1.0), max_tokens=100
    )
    p = plans["t"]
    assert (p.requests, p.samples, p.skipped) == (6, 24, 0)
    assert p.completion_tokens_max == 2400
    assert p.prompt_tokens == 2 * sum(len(q.question) // 4 + 8 for q in PROBLEMS)
    assert p.cost_usd_max == pytest.approx((p.prompt_tokens * 3 + 2400 * 15) / 1e6)
    assert not (tmp_path / "none.jsonl").exists()


def test_teachers_file_errors_name_the_entry_and_field(tmp_path: Path) -> None:
    f = tmp_path / "teachers.yaml"
    f.write_text(
        "- {name: a, base_url: 'http://x/v1', model: m}\n- {name: b, base_url: 'ftp://x', model: m}\n"
    )
    with pytest.raises(BranchmergeError, match=r"teachers.yaml: teachers\[1\]\.base_url"):
        load_teachers(f)
    f.write_text(
        "teachers:\n  - {name: a, base_url: ['http://x/v1', 'http://y/v1'], model: m, requests_per_min: 60}\n"
    )
    (t,) = load_teachers(f)
    assert t.urls == ["http://x/v1", "http://y/v1"] and t.requests_per_min == 60
    f.write_text(
        "- {name: a, base_url: 'http://x/v1', model: m}\n- {name: a, base_url: 'http://y/v1', model: m}\n"
    )
    with pytest.raises(BranchmergeError, match="unique"):
        load_teachers(f)


def test_kill_9_mid_run_then_resume_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys

    app = FastAPI()
    served = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        served.append(body["messages"][0]["content"])
        await asyncio.sleep(0.02)
        return _answer(len(served), body)

    problems = tmp_path / "problems.jsonl"
    problems.write_text(
        "".join(
            json.dumps({"id": f"k{i}", "domain": "d", "question": f"q{i}", "reference": "x"}) + "\n"
            for i in range(300)
        )
    )
    out = tmp_path / "traces.jsonl"
    with running_app(app) as root:
        cmd = [
            sys.executable,
            "-m",
            "branchmerge",
            "generate",
            str(problems),
            "--out",
            str(out),
            "--base-url",
            f"{root}/v1",
            "--model",
            "m",
            "--n",
            "2",
            "--concurrency",
            "8",
            "--max-tokens",
            "4",
        ]
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while (not out.exists() or out.read_text().count("\n") < 60) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        lines_at_kill = out.read_text().count("\n")
        assert 60 <= lines_at_kill < 600, f"killed at {lines_at_kill} lines: nothing left to test"
        cfg = TeacherConfig(name="m", base_url=f"{root}/v1", model="m")
        s = run(cfg, out, n=2, temperatures=(0.6,), seed=None, problems=read_jsonl(problems, Problem))
    traces = read_jsonl(out, Trace)
    keys = [t.key for t in traces]
    assert len(keys) == len(set(keys)) == 600  # every key once: nothing lost, nothing twice
    assert all(t.error is None for t in traces)
    assert s.skipped >= lines_at_kill // 2 - 1  # what was written before the kill was not asked again
    assert len(served) <= 300 + 8  # at most the requests in flight at the kill were sent twice
