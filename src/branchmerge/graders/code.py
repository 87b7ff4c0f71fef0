"""Code answers: run the model's program against tests in the sandbox (see sandbox.py for what it contains).

Specs:
- {"type": "code", "tests": ["assert add(1, 2) == 3", ...], "entry_point": "add", "timeout_s": 10}: MBPP/HumanEval
  style. `tests` is a list of Python statements (each one a test) or one test-program string; with an
  `entry_point`, `candidate` is bound to that function, and a test program defining `check(candidate)` is called
  as `check(<entry_point>)` (HumanEval's layout). Passes iff every test runs without an exception.
- {"type": "code", "stdin_tests": [{"input": "1 2\\n", "output": "3\\n"}, ...]}: LiveCodeBench/Codeforces style. The
  program runs once per test with `input` on stdin; its stdout must equal `output` up to whitespace (compared as
  whitespace-separated tokens). Stops at the first failing test.
`language` must be "python" (the only one supported). The code is the last ```python (or ```py) fenced block of
the answer, else the last plain ``` block, else the whole answer. The detail names the first failing test, the
error, or the test that was running when the time ran out.

The program runs as a module named "solution" (so `if __name__ == "__main__":` demo blocks do not run) under a
harness that reports progress on stdout lines tagged with a per-run random token. A run counts as passed only when
the harness printed its final tagged line, so a solution that calls `exit(0)` or `os._exit(0)` before the tests
finish fails. The token reaches the harness through an environment variable that the harness removes before
loading the solution; this stops accidents and naive exits, not a program built to search memory for the token.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from typing import Any

from pydantic import ConfigDict

from branchmerge.graders.base import Grade, Grader, GraderSpec
from branchmerge.graders.sandbox import SandboxResult, python_argv, run_sandboxed

_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)

_HARNESS = r"""
import json, os, sys

NONCE = os.environ.pop("BM_NONCE", "")


def mark(*parts):
    try:
        sys.stdout.flush()
    except Exception:
        pass
    os.write(1, ("\n" + NONCE + " " + json.dumps(parts) + "\n").encode())


def describe(exc, filename, source):
    where = ""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            lines = source.splitlines()
            if 0 < tb.tb_lineno <= len(lines):
                where = lines[tb.tb_lineno - 1].strip()
        tb = tb.tb_next
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return (where + " -> " if where else "") + text[:300]


with open("tests.json") as f:
    cfg = json.load(f)
with open("solution.py") as f:
    source = f.read()
ns = {"__name__": "solution"}
try:
    exec(compile(source, "solution.py", "exec"), ns)
except BaseException as e:
    mark("error", describe(e, "solution.py", source))
    sys.exit(1)
entry = cfg["entry_point"]
if entry:
    if not callable(ns.get(entry)):
        mark("error", f"the solution defines no function {entry!r}")
        sys.exit(1)
    ns["candidate"] = ns[entry]
for i, test in enumerate(cfg["tests"]):
    mark("test", i)
    try:
        exec(compile(test, f"<test {i}>", "exec"), ns)
    except BaseException as e:
        mark("fail", i, describe(e, f"<test {i}>", test))
        sys.exit(1)
mark("passed", len(cfg["tests"]))
"""


def extract_code(answer: str) -> str:
    """The last ```python/```py block, else the last untagged ``` block, else the whole answer."""
    blocks = _FENCE.findall(answer)
    for tags in (("python", "py", "python3"), ("",)):
        tagged = [body for lang, body in blocks if lang.lower() in tags]
        if tagged:
            return tagged[-1]
    return answer


def _limits(spec: dict[str, Any]) -> dict[str, Any]:
    timeout_s = float(spec.get("timeout_s", 10))
    return {
        "timeout_s": timeout_s,
        "cpu_s": math.ceil(timeout_s),
        "memory_mb": int(spec.get("memory_mb", 512)),
    }


def _failure(run: SandboxResult) -> str:
    if run.killed_reason:
        return run.killed_reason
    lines = run.stderr.strip().splitlines()
    return f"exit {run.returncode}" + (f": {lines[-1][:200]}" if lines else "")


def _tests_program(code: str, spec: dict[str, Any]) -> Grade:
    tests = spec["tests"]
    entry = spec.get("entry_point")
    if isinstance(tests, str):
        if entry and re.search(r"^def check\(", tests, re.MULTILINE):
            tests += f"\n\ncheck({entry})\n"
        tests = [tests]
    nonce = secrets.token_hex(16)
    files = {
        "solution.py": code,
        "harness.py": _HARNESS,
        "tests.json": json.dumps({"tests": tests, "entry_point": entry}),
    }
    run = run_sandboxed(files, python_argv("harness.py"), env={"BM_NONCE": nonce}, **_limits(spec))
    marks = [
        json.loads(line[len(nonce) + 1 :]) for line in run.stdout.splitlines() if line.startswith(nonce + " ")
    ]
    last = marks[-1] if marks else None
    if last and last[0] == "passed" and run.returncode == 0 and not run.timed_out:
        return Grade(True, "")
    if last and last[0] == "fail":
        return Grade(False, f"test {last[1]} failed: {last[2]}")
    if last and last[0] == "error":
        return Grade(False, f"solution failed to load: {last[1]}")
    running = (
        f"running test {last[1]} ({tests[last[1]].strip()[:80]!r})"
        if last and last[0] == "test"
        else "loading the solution"
    )
    if run.timed_out or run.killed_reason:
        return Grade(False, f"{_failure(run)} while {running}")
    return Grade(False, f"the program ended before the tests finished, while {running}: {_failure(run)}")


def _stdin_tests(code: str, spec: dict[str, Any]) -> Grade:
    for i, case in enumerate(spec["stdin_tests"]):
        run = run_sandboxed(
            {"solution.py": code}, python_argv("solution.py"), stdin=case["input"], **_limits(spec)
        )
        if run.timed_out or run.returncode != 0:
            return Grade(False, f"stdin test {i}: {_failure(run)}")
        if run.stdout.split() != str(case["output"]).split():
            return Grade(
                False,
                f"stdin test {i}: got {run.stdout.strip()[:80]!r}, want {str(case['output']).strip()[:80]!r}",
            )
    return Grade(True, "")


def _grade_code(answer: str, reference: str, spec: dict[str, Any]) -> Grade:
    language = spec.get("language", "python")
    if language != "python":
        raise ValueError(f"code grader: language {language!r} is not supported (known: python)")
    if not spec.get("tests") and not spec.get("stdin_tests"):
        raise ValueError("code grader: the spec needs non-empty 'tests' (Python statements) or 'stdin_tests'")
    code = extract_code(answer)
    if not code.strip():
        return Grade(False, "empty answer")
    return _tests_program(code, spec) if spec.get("tests") else _stdin_tests(code, spec)


class CodeSpec(GraderSpec):
    model_config = ConfigDict(extra="allow", frozen=True)


def grade_code(answer: str, reference: str, spec: CodeSpec) -> Grade:
    return _grade_code(answer, reference, spec.model_dump())


CODE = Grader("code", CodeSpec, grade_code, needs_reference=lambda spec: False)
