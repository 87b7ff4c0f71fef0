"""Code answers: the verdict is made in the grader, from plain data, never by the model's program.

Specs:
- {"type": "code", "tests": ["assert add(1, 2) == 3", ...], "entry_point": "add", "timeout_s": 10}:
  MBPP/HumanEval style, assert statements (a list, or one test program string).
- {"type": "code", "stdin_tests": [{"input": "1 2\\n", "output": "3\\n"}, ...]}: LiveCodeBench/Codeforces style.
Both may be given (both must pass). `language` must be "python"; `memory_mb` (512) and `timeout_s` (10, per
sandboxed run) bound the program. Unknown keys are refused. The code is the last ```python (or ```py) fenced
block of the answer, else the last plain ``` block, else the whole answer.

How assert tests are graded (code_tests.py, code_worker.py). The grader parses the tests; it never runs them.
Each assert is split into probes, the values only the solution can compute (`add(1, 2)`), and the rest, which
the grader evaluates itself. One sandboxed run loads the solution (as a module named "solution", so its
`if __name__ == "__main__":` block does not run) and evaluates the probes in order, in one process (so state
such as a mutable default argument carries from call to call, as it would in a test file); it sends back each
value as plain JSON data. The grader decodes those values into exact built-in types and evaluates every assert
with them. The solution's process receives the probes (functions and arguments) and nothing else: not the
tests, not the expected values, no secret. So exiting early, tampering with the runner, reading its own process
or files, printing a fake verdict or monkeypatching builtins can at most change the values it reports, and a
value that is not plain data (an object with its own __eq__, a subclass of int/str/list, a function) fails.

Supported test shapes (anything else is a grader error naming the test and line, never a pass):
- statements: `assert EXPR[, msg]`; imports of math, json, copy, string and random (`from math import
  isclose` too; math/json/copy/string/random need no import; random is seeded with 0, so a test that draws its
  inputs asks the same calls every time; other imports are allowed until a test uses the module); `NAME = EXPR`
  (the test's own value, or a result: `r = candidate(3)` then `assert r == 9`); `for NAME in EXPR:` over the
  test's own values (unrolled, at most 10,000 iterations); `pass`, docstrings and `print`; HumanEval's
  `def check(candidate): ...`, run by a top-level `check(name)` call or, without one, on `entry_point`.
- in an assert, the grader evaluates constants, names, tuples/lists/sets/dicts, arithmetic, comparisons
  (`==`, `!=`, `<`, `is`, `in`, chained), `and`/`or`/`not`, `x if c else y`, indexing and slicing,
  comprehensions over the test's own values, the pure built-ins abs, all, any, bool, bytes, chr, complex,
  dict, divmod, enumerate, float, frozenset, int, isinstance, len, list, max, min, ord, pow, range, repr,
  reversed, round, set, sorted, str, sum, tuple, type, zip, the functions of those five modules (so `math.isclose(f(x), 2.5, rel_tol=1e-6)`,
  `abs(candidate(1.33) - 0.33) < 1e-6`, `set(f(a, b)) == set((4, 5))`), and methods of plain values.
- probes: a call of a solution function whose arguments the test computes (`f(1, [2])`, `candidate(*args)`,
  `Solution().method(x)` on a fresh instance each call, the LiveCodeBench functional layout); any other
  expression over the solution's names (a comprehension over returned functions, a lambda applied to an
  argument, `candidate(x).lower()`) is sent whole and must itself evaluate to plain data. Such a solution-side
  expression may not hold a comparison other than `is` between two non-constants, since the solution would
  see (and could fake) the value it is compared with: `all(f(x) == y for ...)` is refused.
- refused: a call statement whose result no assert checks (`f(lst)` then `assert lst == [...]`), loops over
  returned values, a result passed on to another of the solution's functions (`helper(f(x), 2.5)` would let
  the solution judge itself; `enc = encode(s)` then `assert candidate(enc) == s` would let it make its own
  input), `if`/`while`/`try`/`with`, helper functions or classes defined in the tests, other modules. On
  HumanEval (164 tasks) this reads 161; the three refused are 32, 38 and 50, whose checks rely on helpers of
  the prompt, i.e. of the answer.
Arguments are copies: each probe's arguments are decoded afresh in the solution's process, so a solution that
mutates its arguments changes nothing the grader sees, and an assert that a test's own variable was (or was
not) changed checks the test's unchanged value. A probe that raises, returns something not plain data, or never
ran (the program exited, crashed, timed out) fails every assert that needs it.

Stdin tests run the program once per test with `input` on stdin (a fresh process for each, all in one sandboxed
run, each with `timeout_s`); its stdout must equal `output` up to whitespace (compared here as
whitespace-separated tokens). The program never sees the outputs.

The detail names the first failing test and why (the values, an exception, the time limit); a bad spec or an
unsupported test shape is a ValueError naming the field (the batch path records it as a grader error).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from branchmerge.graders.base import Grade, Grader, GraderSpec
from branchmerge.graders.code_tests import (
    Check,
    Plan,
    Probe,
    ProbeFailed,
    TestShapeError,
    plan_tests,
    run_check,
)
from branchmerge.graders.code_worker import decode, encode
from branchmerge.graders.sandbox import SandboxResult, python_argv, run_sandboxed

_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
WORKER = Path(__file__).with_name("code_worker.py")
MAX_STDOUT = 1024 * 1024  # bytes of one stdin test's output that are compared


class StdinTest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str
    output: str | int | float


class CodeSpec(GraderSpec):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tests: list[str] | str | None = None
    stdin_tests: list[StdinTest] | None = None
    entry_point: str | None = None
    language: Literal["python"] = "python"
    timeout_s: float = Field(10, gt=0)
    memory_mb: int = Field(512, ge=16)

    @model_validator(mode="after")
    def _has_tests(self) -> CodeSpec:
        if not self.tests and not self.stdin_tests:
            raise ValueError("the spec needs non-empty 'tests' (assert statements) or 'stdin_tests'")
        return self


def extract_code(answer: str) -> str:
    """The last ```python/```py block, else the last untagged ``` block, else the whole answer."""
    blocks = _FENCE.findall(answer)
    for tags in (("python", "py", "python3"), ("",)):
        tagged = [body for lang, body in blocks if lang.lower() in tags]
        if tagged:
            return tagged[-1]
    return answer


def _limits(spec: CodeSpec) -> dict[str, Any]:
    return {"timeout_s": spec.timeout_s, "cpu_s": math.ceil(spec.timeout_s), "memory_mb": spec.memory_mb}


def _failure(run: SandboxResult) -> str:
    if run.killed_reason:
        return run.killed_reason
    lines = run.stderr.strip().splitlines()
    return f"exit {run.returncode}" + (f": {lines[-1][:200]}" if lines else "")


def _wire(probe: Probe) -> dict[str, Any]:
    if probe.callee is not None:
        return {
            "callee": probe.callee,
            "args": encode(list(probe.args)),
            "kwargs": [[k, encode(v)] for k, v in probe.kwargs],
        }
    return {
        "expr": probe.expr,
        "bound": [[k, encode(v)] for k, v in probe.bound],
        "aliases": [list(a) for a in probe.aliases],
    }


def _outcomes(run: SandboxResult, probes: list[Probe]) -> tuple[list[Any], str | None]:
    """One value per probe (a ProbeFailed where there is none) and, if the solution did not load, why."""
    got: list[Any] = []
    for line in run.stdout.splitlines():
        if not line.strip():
            continue
        try:
            message = json.loads(line)
            if not got and isinstance(message, dict) and set(message) == {"load_error"}:
                return [], f"the solution failed to load: {str(message['load_error'])[:300]}"
            if not isinstance(message, dict) or message.get("i") != len(got) or len(got) >= len(probes):
                break  # anything out of protocol ends the reading; the missing values fail below
            if set(message) == {"i", "value"}:
                got.append(decode(message["value"]))
            elif set(message) == {"i", "raised"}:
                got.append(ProbeFailed(f"raised {str(message['raised'])[:300]}"))
            else:
                break
        except (ValueError, TypeError, RecursionError) as e:
            got.append(ProbeFailed(f"returned something that is not plain data ({str(e)[:100]})"))
            break
    if len(got) < len(probes):
        reason = "more output than allowed" if run.truncated else _failure(run)
        missing = ProbeFailed(f"was never evaluated: the program ended before the tests finished ({reason})")
        got += [missing] * (len(probes) - len(got))
    return got, None


def _assert_tests(code: str, plan: Plan, spec: CodeSpec) -> Grade:
    probes = json.dumps([_wire(p) for p in plan.probes])
    files = {"solution.py": code, "worker.py": WORKER.read_text()}
    run = run_sandboxed(files, python_argv("worker.py"), stdin=probes, **_limits(spec))
    got, load_error = _outcomes(run, plan.probes)
    if load_error:
        return Grade(False, load_error)
    for check in plan.checks:
        line = f" (line {check.line})" if check.line > 1 else ""
        where = f"test {check.test} failed: {check.source[:100]}{line}"
        try:
            ok = run_check(check, plan.modules, got)
        except ProbeFailed as e:
            return Grade(False, f"{where}: {_probe_of(check, plan, got, e)} {e}")
        except Exception as e:  # the assert's own expression failed on the returned values, as `assert` would
            return Grade(False, f"{where}: {type(e).__name__}: {str(e)[:200]}")
        if not ok:
            return Grade(False, f"{where}; the solution returned {_returned(check, plan, got)}")
    return Grade(True, "")


def _probe_of(check: Check, plan: Plan, got: list[Any], failed: ProbeFailed) -> str:
    for index in check.probes.values():
        if got[index] is failed:
            return plan.probes[index].where
    return "a value it needs"


def _returned(check: Check, plan: Plan, got: list[Any]) -> str:
    shown = [f"{plan.probes[i].where} -> {got[i]!r:.100}" for i in sorted(check.probes.values())]
    return "; ".join(shown[:3]) or "nothing (the assert uses no value of the solution)"


def _stdin_tests(code: str, spec: CodeSpec) -> Grade:
    """All stdin tests in one sandboxed run: the worker starts the program once per input (a fresh process each,
    limits inherited); the outputs come back and are compared here, in order."""
    cases = spec.stdin_tests or []
    cfg = {
        "argv": python_argv("solution.py"),
        "inputs": [c.input for c in cases],
        "timeout_s": spec.timeout_s,
        "max_output": MAX_STDOUT,
    }
    limits = _limits(spec) | {"timeout_s": spec.timeout_s * len(cases) + 10}
    files = {"solution.py": code, "worker.py": WORKER.read_text()}
    run = run_sandboxed(
        files, python_argv("worker.py", "stdin"), stdin=json.dumps(cfg),
        max_output_kb=2 * MAX_STDOUT // 1024 * min(len(cases), 64), **limits,
    )  # fmt: skip
    results: list[dict[str, Any]] = []
    for line in run.stdout.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            break
        if not isinstance(message, dict) or message.get("i") != len(results):
            break
        results.append(message)
    for i, case in enumerate(cases):
        want = str(case.output)
        if i >= len(results):
            return Grade(False, f"stdin test {i}: the program never ran it ({_failure(run)})")
        r = results[i]
        if r.get("timed_out"):
            return Grade(False, f"stdin test {i}: wall-clock timeout ({spec.timeout_s:g} s)")
        if r.get("returncode") != 0:
            err = str(r.get("stderr", "")).strip().splitlines()
            return Grade(
                False, f"stdin test {i}: exit {r.get('returncode')}" + (f": {err[-1][:200]}" if err else "")
            )
        got = str(r.get("stdout", ""))
        if r.get("truncated") or got.split() != want.split():
            return Grade(False, f"stdin test {i}: got {got.strip()[:80]!r}, want {want.strip()[:80]!r}")
    return Grade(True, "")


def grade_code(answer: str, reference: str, spec: CodeSpec) -> Grade:
    plan = None
    if spec.tests:
        tests = (spec.tests,) if isinstance(spec.tests, str) else tuple(spec.tests)
        try:
            plan = plan_tests(tests, spec.entry_point)
        except TestShapeError as e:
            raise ValueError(f"code grader spec: {e}") from None
    code = extract_code(answer)
    if not code.strip():
        return Grade(False, "empty answer")
    if plan is not None:
        result = _assert_tests(code, plan, spec)
        if not result.passed:
            return result
    return _stdin_tests(code, spec) if spec.stdin_tests else Grade(True, "")


CODE = Grader("code", CodeSpec, grade_code, needs_reference=lambda spec: False)
