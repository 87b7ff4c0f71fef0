"""The trace generator: end to end against `serve`, resume, torn files, retries and errors against fakes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, Trace, append_jsonl, read_jsonl
from branchmerge.records.repair import repair_tail
from branchmerge.teachers.client import (
    TeacherConfig,
    generate_traces,
    parse_choice,
    request_seed,
)
from branchmerge.teachers.serve import running_app, running_server
from fakes import fake_openai, ok

PROBLEMS = [
    Problem(id=f"p{i}", domain="arith", question=f"What is {i} + {i}?", reference=str(2 * i))
    for i in range(3)
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Iterator[TeacherConfig]:
    with running_server(tiny_model_dir) as base_url:
        yield TeacherConfig(name="tiny", base_url=base_url, model=tiny_model_dir.name)


def run(cfg: TeacherConfig, out: Path, problems: list[Problem] = PROBLEMS, **kw: Any):
    kw = {"n": 2, "temperatures": (0.6, 1.0), "max_tokens": 8, "seed": 3, "show_progress": False} | kw
    return generate_traces(problems, cfg, out, **kw)


def test_end_to_end_writes_every_key_once_and_a_rerun_writes_nothing(
    tiny: TeacherConfig, tmp_path: Path
) -> None:
    out = tmp_path / "traces.jsonl"
    summary = run(tiny, out)
    traces = read_jsonl(out, Trace)
    assert len(traces) == 2 * 2 * len(PROBLEMS) == summary.traces
    assert len({t.key for t in traces}) == len(traces)
    assert {(t.sample, t.temperature) for t in traces} == {(0, 0.6), (1, 0.6), (2, 1.0), (3, 1.0)}
    assert (summary.requests, summary.errors, summary.skipped) == (6, 0, 0)
    assert all(t.error is None and t.finish_reason in {"stop", "length"} for t in traces)
    assert all(t.completion_tokens <= 8 and t.prompt_tokens > 0 and t.latency_s > 0 for t in traces)
    assert summary.completion_tokens == sum(t.completion_tokens for t in traces)  # per-choice counts: exact

    again = run(tiny, out)
    assert (again.requests, again.traces, again.skipped) == (0, 0, 6)
    assert read_jsonl(out, Trace) == traces


def test_seeded_runs_reproduce(tiny: TeacherConfig, tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run(tiny, a, temperatures=(1.0,))
    run(tiny, b, temperatures=(1.0,))

    def content(path: Path) -> list[tuple]:
        return sorted((t.key, t.reasoning, t.answer, t.completion_tokens) for t in read_jsonl(path, Trace))

    assert content(a) == content(b)
    assert len({answer for *_, answer, _ in content(a)}) > 1  # samples differ from each other
    assert request_seed(3, "p0", 0) == request_seed(3, "p0", 0) != request_seed(3, "p0", 1)


def test_torn_last_line_is_cut_and_the_run_completes(tiny: TeacherConfig, tmp_path: Path) -> None:
    out = tmp_path / "traces.jsonl"
    run(tiny, out, problems=PROBLEMS[:1])
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a crash mid-write
    summary = run(tiny, out)
    text = out.read_text()
    assert text.endswith("\n") and all(line for line in text.split("\n")[:-1])
    traces = read_jsonl(out, Trace)  # every line parses again
    assert len(traces) == 12 == len({t.key for t in traces})
    assert (
        summary.skipped == 1
    )  # p0 at 0.6 was whole; p0 at 1.0 lost one sample and only that one is rewritten
    assert summary.traces == 12 - (len(lines) - 1)


def test_repair_tail_keeps_a_complete_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}')
    repair_tail(path)
    assert path.read_text() == '{"a": 1}\n{"b": 2}\n'
    path.write_text('{"a": 1}\n{"b": ')
    repair_tail(path)
    assert path.read_text() == '{"a": 1}\n'


def test_429_with_retry_after_is_retried_and_reasoning_content_is_read(tmp_path: Path) -> None:
    def answer(call: int, body: dict[str, Any]) -> JSONResponse:
        if call == 1:
            return JSONResponse(
                {"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": "1"}
            )
        return ok(body, {"role": "assistant", "content": " 42 ", "reasoning_content": "6 times 7"})

    app, calls = fake_openai(answer)
    out = tmp_path / "traces.jsonl"
    with running_app(app) as root:
        cfg = TeacherConfig(name="fake", base_url=f"{root}/v1", model="m", max_concurrency=1)
        summary = run(cfg, out, problems=PROBLEMS[:1], temperatures=(0.6,), n=3)
    assert len(calls) == 2 and calls[1]["t"] - calls[0]["t"] >= 0.9  # waited as told
    assert summary.retries == 1 and summary.errors == 0
    traces = read_jsonl(out, Trace)
    assert [(t.reasoning, t.answer, t.model) for t in traces] == [("6 times 7", "42", "fake-1")] * 3
    assert [t.completion_tokens for t in traces] == [7, 7, 7]  # usage split evenly: no per-choice counts
    assert calls[1]["body"]["n"] == 3 and calls[1]["body"]["seed"] == request_seed(3, "p0", 0)


def test_400_becomes_error_traces_and_the_run_finishes(tmp_path: Path) -> None:
    app, calls = fake_openai(
        lambda _c, _b: JSONResponse({"error": {"message": "bad model"}}, status_code=400)
    )
    out = tmp_path / "traces.jsonl"
    with running_app(app) as root:
        summary = run(TeacherConfig(name="fake", base_url=f"{root}/v1", model="m"), out)
    traces = read_jsonl(out, Trace)
    assert len(calls) == 6  # no retries on a client error
    assert summary.errors == summary.traces == len(traces) == 12
    assert all(t.error == "HTTP 400: bad model" for t in traces)


def test_exhausted_retries_are_recorded_and_count_as_done(tmp_path: Path) -> None:
    app, calls = fake_openai(lambda _c, _b: JSONResponse({"error": {"message": "down"}}, status_code=503))
    out = tmp_path / "traces.jsonl"
    with running_app(app) as root:
        cfg = TeacherConfig(name="fake", base_url=f"{root}/v1", model="m", max_retries=2, backoff_s=0.01)
        summary = run(cfg, out, problems=PROBLEMS[:1], temperatures=(0.6,), n=1)
        again = run(cfg, out, problems=PROBLEMS[:1], temperatures=(0.6,), n=1)
    assert len(calls) == 3 and summary.retries == 2
    (trace,) = read_jsonl(out, Trace)
    assert trace.error == "gave up after 3 attempt(s); last: HTTP 503: down"
    assert again.skipped == 1 and again.requests == 0


def test_connection_refused_is_an_error_trace(tmp_path: Path) -> None:
    with running_app(FastAPI()) as root:
        pass  # the port is free again: nothing listens there now
    cfg = TeacherConfig(name="gone", base_url=f"{root}/v1", model="m", max_retries=1, backoff_s=0.01)
    summary = run(cfg, tmp_path / "t.jsonl", problems=PROBLEMS[:1], temperatures=(0.6,), n=1)
    assert summary.errors == 1
    assert "connection failed" in read_jsonl(tmp_path / "t.jsonl", Trace)[0].error


def test_think_tags_in_content_and_api_key_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, calls = fake_openai(lambda _c, b: ok(b, {"role": "assistant", "content": "<think>r</think>\n\na"}))
    out = tmp_path / "traces.jsonl"
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    with running_app(app) as root:
        cfg = TeacherConfig(name="fake", base_url=f"{root}/v1", model="m", api_key_env="FAKE_KEY")
        run(cfg, out, problems=PROBLEMS[:1], temperatures=(0.6,), n=1, seed=None)
    (trace,) = read_jsonl(out, Trace)
    assert (trace.reasoning, trace.answer) == ("r", "a")
    assert calls[0]["auth"] == "Bearer sk-test" and "seed" not in calls[0]["body"]


def test_partly_written_request_only_fills_missing_keys(tmp_path: Path) -> None:
    app, calls = fake_openai(lambda _c, b: ok(b, {"role": "assistant", "content": "x"}))
    out = tmp_path / "traces.jsonl"
    append_jsonl(
        out, [Trace(problem_id="p0", teacher="fake", model="m", sample=1, temperature=0.6, answer="old")]
    )
    with running_app(app) as root:
        summary = run(
            TeacherConfig(name="fake", base_url=f"{root}/v1", model="m"), out, problems=PROBLEMS[:1]
        )
    traces = read_jsonl(out, Trace)
    assert sorted(t.sample for t in traces) == [0, 1, 2, 3]
    assert summary.traces == 3 and len(calls) == 2


def test_missing_api_key_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    cfg = TeacherConfig(name="t", base_url="http://127.0.0.1:9/v1", model="m", api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(BranchmergeError, match="NO_SUCH_KEY_VAR"):
        run(cfg, tmp_path / "t.jsonl")
    assert not (tmp_path / "t.jsonl").exists()


def test_config_and_inputs_are_checked_before_any_request(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="set by generate itself"):
        TeacherConfig(name="t", base_url="http://127.0.0.1:9/v1", model="m", extra_body={"n": 4})
    with pytest.raises(ValueError, match="not an http"):
        TeacherConfig(name="t", base_url="127.0.0.1:9", model="m")
    cfg = TeacherConfig(name="t", base_url="http://127.0.0.1:9/v1", model="m")
    with pytest.raises(BranchmergeError, match="appears more than once"):
        run(cfg, tmp_path / "t.jsonl", problems=[PROBLEMS[0], PROBLEMS[0]])
    with pytest.raises(BranchmergeError, match="top_p"):
        run(cfg, tmp_path / "t.jsonl", top_p=0)


def test_parse_choice_prefers_reasoning_fields() -> None:
    assert parse_choice({"content": "b", "reasoning_content": "a"}) == ("a", "b")
    assert parse_choice({"content": "b", "reasoning": "a"}) == ("a", "b")
    assert parse_choice({"content": "<think>a</think>\n\nb", "reasoning_content": None}) == ("a", "b")
    assert parse_choice({"content": None, "reasoning_content": "cut"}) == ("cut", "")
