"""The eval runner against fake OpenAI endpoints and a tiny local checkpoint, and `branchmerge eval`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from branchmerge.cli.main import app
from branchmerge.errors import BranchmergeError
from branchmerge.evaluate.runner import evaluate_model, judge_cache_path, outputs_path, truncation_rate
from branchmerge.judge import judge_spec
from branchmerge.records import EvalSample, Problem, Trace, read_jsonl, write_jsonl
from branchmerge.teachers.config import TeacherConfig
from branchmerge.teachers.serve import running_app
from fakes import fake_openai, ok

# What the fake model answers, by the question's first word: (content, finish_reason, completion tokens/choice).
SCRIPT = {
    "think": ("<think>six times seven, carefully</think>The answer is $\\boxed{42}$.", "stop", 40),
    "plain": ("blue", "stop", 1),
    "wrong": ("<think>hmm</think>8", "stop", 9),
    "cut": ("<think>still thinking and thinking", "length", 16),
    "code": ("<think>easy</think>```python\ndef add(a, b):\n    return a + b\n```", "stop", 30),
    "fail": None,  # HTTP 400 until the test says otherwise
}

PROBLEMS = [
    Problem(id="think", domain="math", question="think: 6*7?", reference="42", grader={"type": "math"}),
    Problem(
        id="plain", domain="words", question="plain: sky colour?", reference="blue", grader={"type": "exact"}
    ),
    Problem(id="wrong", domain="math", question="wrong: 3+4?", reference="7", grader={"type": "math"}),
    Problem(id="cut", domain="math", question="cut: 2+2?", reference="4", grader={"type": "math"}),
]
CODE = Problem(
    id="code",
    domain="code",
    question="code: write add(a, b)",
    reference="",
    grader={"type": "code", "tests": ["assert add(1, 2) == 3"], "entry_point": "add"},
)


def scripted(_: int, body: dict[str, Any]) -> JSONResponse:
    word = body["messages"][-1]["content"].split(":")[0]
    if word not in SCRIPT:  # an mdr item or anything else: a thought, then no real answer
        return ok(body, {"role": "assistant", "content": "<think>no idea</think>I do not know."})
    if SCRIPT[word] is None:
        return JSONResponse({"error": {"message": "scripted failure"}}, status_code=400)
    content, finish, tokens = SCRIPT[word]  # type: ignore[misc]
    choices = [
        {"index": j, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
        | {"completion_tokens": tokens}
        for j in range(body["n"])
    ]
    usage = {"prompt_tokens": 5, "completion_tokens": tokens * body["n"]}
    return JSONResponse({"model": "fake-1", "choices": choices, "usage": usage})


@pytest.fixture
def endpoint() -> Iterator[tuple[TeacherConfig, list[dict[str, Any]]]]:
    app_, calls = fake_openai(scripted)
    with running_app(app_) as root:
        yield TeacherConfig(name="fake", base_url=f"{root}/v1", model="fake-1", max_retries=0), calls


def run(model: Any, problems: list[Problem], out: Path, **kw: Any) -> list[EvalSample]:
    return evaluate_model(model, problems, out, benchmark="unit", show_progress=False, **kw)


def test_endpoint_samples_are_graded_without_reasoning_and_truncation_is_counted(endpoint, tmp_path):
    cfg, calls = endpoint
    samples = run(cfg, PROBLEMS, tmp_path / "s.jsonl", n=2, temperature=0.6, top_p=0.95, max_tokens=64)
    assert [(s.item_id, s.sample) for s in samples] == [(p.id, k) for p in PROBLEMS for k in range(2)]
    by = {s.item_id: s for s in samples if s.sample == 0}
    assert by["think"].passed and by["think"].output == "The answer is $\\boxed{42}$."
    assert by["plain"].passed and by["plain"].reasoning_tokens == 0  # no reasoning, 1 token for "blue"
    assert not by["wrong"].passed and by["wrong"].detail != "truncated"
    assert not by["cut"].passed and by["cut"].detail == "truncated" and by["cut"].finish_reason == "length"
    # Estimated: the server's completion tokens minus the answer's (4 characters per token).
    assert by["think"].reasoning_tokens == 40 - 7 and by["think"].output_tokens == 40
    assert by["cut"].reasoning_tokens == 16  # a cut completion is all reasoning
    assert truncation_rate(samples) == 0.25
    assert {s.model for s in samples} == {"fake"} and {s.benchmark for s in samples} == {"unit"}
    # One request per item carrying n, with the sampling settings and a seed.
    assert len(calls) == 4
    body = calls[0]["body"]
    assert (body["n"], body["temperature"], body["top_p"], body["max_tokens"]) == (2, 0.6, 0.95, 64)
    assert isinstance(body["seed"], int)
    traces = read_jsonl(outputs_path(tmp_path / "s.jsonl"), Trace)
    assert len(traces) == 8 and {t.teacher for t in traces} == {"fake"}
    assert len(read_jsonl(tmp_path / "s.jsonl", EvalSample)) == 8


def test_a_rerun_resumes_without_repeating_requests_or_grades(endpoint, tmp_path):
    cfg, calls = endpoint
    out = tmp_path / "s.jsonl"
    run(cfg, PROBLEMS[:2], out, n=3)
    assert len(calls) == 2
    again = run(cfg, PROBLEMS, out, n=3)
    assert len(calls) == 4  # only the two new items were asked
    assert len(again) == 12
    keys = [(s.model, s.item_id, s.sample) for s in read_jsonl(out, EvalSample)]
    assert len(keys) == len(set(keys)) == 12
    # Completions written but not graded yet (a crash between the two) are graded without asking again.
    out.write_text(out.read_text().splitlines(keepends=True)[0])
    assert len(run(cfg, PROBLEMS, out, n=3)) == 12 and len(calls) == 4
    traces = read_jsonl(outputs_path(out), Trace)
    assert len({t.key for t in traces}) == len(traces) == 12
    # Regrading keeps the completions and rewrites the samples; deleting OUT starts over.
    assert len(run(cfg, PROBLEMS, out, n=3, regrade=True)) == 12 and len(calls) == 4
    assert len(read_jsonl(out, EvalSample)) == 12
    out.unlink()
    assert len(run(cfg, PROBLEMS, out, n=3)) == 12 and len(calls) == 8
    assert len(read_jsonl(outputs_path(out), Trace)) == 12


def test_failed_requests_are_reported_then_asked_again(endpoint, tmp_path):
    cfg, calls = endpoint
    out = tmp_path / "s.jsonl"
    failing = Problem(id="fail", domain="x", question="fail: ?", reference="y")
    with pytest.raises(BranchmergeError, match=r"1 sample\(s\) got no completion .*fail.*rerun"):
        run(cfg, [PROBLEMS[1], failing], out)
    assert [s.item_id for s in read_jsonl(out, EvalSample)] == ["plain"]  # the rest is graded
    SCRIPT["fail"] = ("yes", "stop", 1)
    try:
        samples = run(cfg, [PROBLEMS[1], failing], out)
    finally:
        SCRIPT["fail"] = None
    assert [s.item_id for s in samples] == ["plain", "fail"] and len(calls) == 3  # only the failed one again


def test_bad_input_fails_before_any_request(endpoint, tmp_path):
    cfg, calls = endpoint
    unknown = Problem(id="u", domain="x", question="plain: ?", reference="y", grader={"type": "nope"})
    with pytest.raises(BranchmergeError, match=r"grader type\(s\) \['nope'\] not known \(item u"):
        run(cfg, [unknown], tmp_path / "s.jsonl")
    judged = Problem(
        id="j", domain="ethics", question="plain: ?", reference="", grader=judge_spec("q", "r", "j")
    )
    with pytest.raises(BranchmergeError, match="graded by an LLM judge, and no judge is given"):
        run(cfg, [judged], tmp_path / "s.jsonl")
    with pytest.raises(BranchmergeError, match="top_p"):
        run(cfg, PROBLEMS, tmp_path / "s.jsonl", top_p=0)
    run(cfg, PROBLEMS[:1], tmp_path / "s.jsonl", temperature=0.6)
    with pytest.raises(BranchmergeError, match="completions at temperature 0.6, not 1.0"):
        run(cfg, PROBLEMS[:1], tmp_path / "s.jsonl", temperature=1.0)
    assert len(calls) == 1


def test_judge_items_go_to_the_judge_without_the_reasoning(endpoint, tmp_path):
    cfg, calls = endpoint
    judge_app, judge_calls = fake_openai(
        lambda _, body: ok(
            body, {"role": "assistant", "content": "<reason>fair</reason><verdict>PASS</verdict>"}
        )
    )
    item = Problem(
        id="ethics-1",
        domain="ethics",
        question="think: should we?",
        reference="weigh both sides",
        grader=judge_spec("should we?", "Passes when both sides are weighed.", "ethics-1"),
    )
    out = tmp_path / "s.jsonl"
    with running_app(judge_app) as root:
        judge = TeacherConfig(name="judge", base_url=f"{root}/v1", model="judge-1", max_retries=0)
        [sample] = run(cfg, [item], out, judge=judge)
        assert sample.passed and "PASS" in sample.detail and "judge-1" in sample.detail
        prompt = judge_calls[0]["body"]["messages"][-1]["content"]
        assert "The answer is" in prompt and "six times seven" not in prompt  # reasoning removed
        assert judge_cache_path(out).exists()
        out.unlink()
        run(cfg, [item], out, judge=judge)  # regraded from the cache: the judge is not asked again
        assert len(judge_calls) == 1
    from branchmerge.judge import judge_configured

    assert not judge_configured()  # the run's judge does not outlive the run


def test_local_checkpoint_in_process_and_served_give_the_same_samples(tiny_model_dir, tokenizer, tmp_path):
    problems = [
        Problem(
            id=f"p{i}",
            domain="add",
            question=f"What is {i}+1?",
            reference=str(i + 1),
            grader={"type": "numeric"},
        )
        for i in range(3)
    ]
    local = run(tiny_model_dir, problems, tmp_path / "a.jsonl", n=2, max_tokens=8, model_name="tiny")
    served = run(
        tiny_model_dir, problems, tmp_path / "b.jsonl", n=2, max_tokens=8, model_name="tiny", serve=True
    )
    assert len(local) == len(served) == 6 and len(read_jsonl(tmp_path / "b.jsonl", EvalSample)) == 6
    traces_a = read_jsonl(outputs_path(tmp_path / "a.jsonl"), Trace)
    traces_b = read_jsonl(outputs_path(tmp_path / "b.jsonl"), Trace)
    assert {t.key: t.answer for t in traces_a} == {t.key: t.answer for t in traces_b}  # same seeds, same text
    for s in local:
        assert s.model == "tiny" and 0 < s.output_tokens <= 8
        if s.detail == "truncated":  # a random model rarely stops: cut, all reasoning
            assert s.reasoning_tokens == s.output_tokens
        else:
            trace = next(t for t in traces_a if (t.problem_id, t.sample) == (s.item_id, s.sample))
            assert s.reasoning_tokens == len(tokenizer(trace.reasoning)["input_ids"]) * bool(trace.reasoning)
    assert [(s.item_id, s.sample, s.passed, s.detail) for s in local] == [
        (s.item_id, s.sample, s.passed, s.detail) for s in served
    ]


# --------------------------------------------------------------------------------------------- the CLI


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["eval", *args])
    return result.exit_code, result.output


def test_cli_problems_file_against_an_endpoint(endpoint, tmp_path):
    cfg, calls = endpoint
    write_jsonl(tmp_path / "p.jsonl", [*PROBLEMS, CODE])
    out = tmp_path / "s.jsonl"
    base = ["--base-url", str(cfg.base_url), "--model", "fake-1", "--out", str(out)]
    code, output = cli("--problems", str(tmp_path / "p.jsonl"), *base, "--n", "2", "--name", "m")
    assert code == 0, output
    samples = read_jsonl(out, EvalSample)
    assert (
        len(samples) == 10 and {s.benchmark for s in samples} == {"p"} and {s.model for s in samples} == {"m"}
    )
    assert all(s.passed for s in samples if s.item_id == "code")  # run in the sandbox
    assert "truncation rate 20.0% (2 of 10 samples" in output
    rows = {line.split("│")[1].strip(): line for line in output.splitlines() if line.count("│") > 5}
    assert "33.3%" in rows["math"] and "100.0%" in rows["code"] and "60.0%" in rows["all"]
    code, output = cli("--problems", str(tmp_path / "p.jsonl"), *base, "--n", "2", "--name", "m", "--regrade")
    assert code == 0 and "60.0%" in output and len(calls) == 5  # graded again, nothing asked again
    assert len(read_jsonl(out, EvalSample)) == 10


def test_cli_mdr_and_standard_set_smoke(endpoint, tmp_path):
    cfg, calls = endpoint
    base = ["--base-url", str(cfg.base_url), "--model", "fake-1"]
    out = tmp_path / "mdr.jsonl"
    code, output = cli(
        "--benchmark", "mdr", "--domains", "logic", "--levels", "1", "--n", "3", *base, "--out", str(out)
    )
    assert code == 0, output
    samples = read_jsonl(out, EvalSample)
    assert [(s.item_id, s.sample) for s in samples] == [("mdr-logic-L1", k) for k in range(3)]
    assert not any(s.passed for s in samples) and {s.benchmark for s in samples} == {"mdr"}
    code, output = cli("--benchmark", "mdr", "--domains", "logic", "--levels", "1-2", "--fresh-seed", "5", *base,
                       "--out", str(tmp_path / "fresh.jsonl"))  # fmt: skip
    assert code == 0, output
    assert sorted(s.item_id for s in read_jsonl(tmp_path / "fresh.jsonl", EvalSample)) == [
        "mdr-logic-L1-s5",
        "mdr-logic-L2-s5",
    ]
    rows = [{"question": "plain: 1+1?", "answer": "One and one.\n#### 2"}] * 1
    (tmp_path / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, output = cli("--set", "gsm8k", "--set-path", str(tmp_path / "gsm8k.jsonl"), *base,
                       "--out", str(tmp_path / "g.jsonl"))  # fmt: skip
    assert code == 0, output
    [sample] = read_jsonl(tmp_path / "g.jsonl", EvalSample)
    assert sample.benchmark == "gsm8k" and not sample.passed  # the fake says "blue"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--base-url", "http://127.0.0.1:9/v1", "--model", "m"], "give exactly one source of items"),
        (["--problems", "p.jsonl", "--benchmark", "mdr", "--base-url", "http://x/v1", "--model", "m"], "(got --problems, --benchmark)"),
        (["--benchmark", "mdr", "--levels", "0-3", "--base-url", "http://x/v1", "--model", "m"], "--levels: '0-3' is outside 1-10"),
        (["--benchmark", "mdr", "--domains", "nope", "--base-url", "http://x/v1", "--model", "m"], "mdr: unknown domain(s) ['nope']"),
        (["--benchmark", "mmlu", "--base-url", "http://x/v1", "--model", "m"], "--benchmark: 'mmlu' is not a built-in"),
        (["--problems", "p.jsonl", "--levels", "1", "--base-url", "http://x/v1", "--model", "m"], "--levels: only with --benchmark mdr"),
        (["--set", "gsm8k", "--base-url", "http://x/v1", "--model", "m"], "--set gsm8k: give its local file"),
        (["--benchmark", "mdr", "--base-url", "http://x/v1"], "--base-url needs --model"),
        (["--benchmark", "mdr"], "name one model"),
        (["--benchmark", "mdr", "--base-url", "ftp://x", "--model", "m"], "--base-url: base_url: 'ftp://x' is not an http(s) URL"),
        (["./no-such-model", "--benchmark", "mdr", "--domains", "logic"], "no-such-model: model folder not found"),
        (["--benchmark", "mdr", "--domains", "ethics", "--base-url", "http://x/v1", "--model", "m"], "no judge is given"),
        (["--benchmark", "mdr", "--judge", "http://x/v1", "--base-url", "http://x/v1", "--model", "m"], "--judge URL --judge-model NAME"),
    ],
)  # fmt: skip
def test_cli_bad_input_is_one_line_and_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, output = cli(*args, "--out", "s.jsonl")
    assert code == 2, output
    assert message in output and "Traceback" not in output and len(output.strip().splitlines()) == 1
