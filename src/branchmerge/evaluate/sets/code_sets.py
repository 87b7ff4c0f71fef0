"""Code sets: HumanEval-style function completion and LiveCodeBench-style problems, graded by running the
model's program in the sandbox (graders/code.py).

- HumanEval (openai_humaneval; MultiPL-E / HumanEval+ copies keep the layout): task_id, prompt,
  canonical_solution, test, entry_point. The question is the prompt (signature + docstring); the reference is
  prompt + canonical_solution, a complete program that passes; the grader runs the `test` program (which
  defines `check(candidate)`) and then `check(<entry_point>)`. The model's answer must be the whole function
  (its code block, or the whole answer), not only the body.
- LiveCodeBench (livecodebench/code_generation_lite): question_title, question_content, platform, question_id,
  contest_date, starter_code, difficulty, public_test_cases, private_test_cases, metadata. Test cases are a
  JSON list of {input, output, testtype}; the lite release stores the private ones as base64 of a
  zlib-compressed pickle of that JSON text, read here by an unpickler that refuses every class, so the file
  can hold nothing but text. "stdin" cases become the code grader's `stdin_tests` (stdout compared as
  whitespace-separated tokens); "functional" (LeetCode) cases, whose input is one JSON value per line, become
  assertions on `Solution().<metadata.func_name>(*args)`. Public and private cases are all graded.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import pickle
import zlib
from typing import Any

from branchmerge.evaluate.sets.base import Row, StandardSet
from branchmerge.records import Problem


def _humaneval(row: Row, seed: int) -> Problem:
    prompt = row.text("prompt")
    entry_point = row.text("entry_point").strip()
    test = row.text("test")
    if "def check(" not in test:
        raise row.fail("test", "the test program defines no check(candidate) function")
    return Problem(
        id=row.item_id("task_id"),
        domain="code",
        question=prompt,
        reference=prompt + row.text("canonical_solution", allow_empty=True),
        # One test program (a list, so the grader does not append its own check call a second time).
        grader={"type": "code", "tests": [f"{test}\n\ncheck({entry_point})\n"], "entry_point": entry_point},
        source=row.set_name,
        meta={"entry_point": entry_point},
    )


class _TextOnly(pickle.Unpickler):
    """Loads pickled strings, lists and dicts only: a class or function in the data is refused, not run."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: test cases are text")


def decode_cases(row: Row, column: str) -> list[dict[str, Any]]:
    """A test-case column: a list, JSON text, or the lite release's base64(zlib(pickle(JSON text)))."""
    value = row.optional(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    try:
        if isinstance(value, str) and not value.lstrip().startswith("["):
            value = _TextOnly(io.BytesIO(zlib.decompress(base64.b64decode(value)))).load()
        cases = json.loads(value) if isinstance(value, str) else value
    except (ValueError, binascii.Error, zlib.error, pickle.UnpicklingError, EOFError) as e:
        raise row.fail(column, f"not JSON test cases nor base64(zlib(pickle(JSON))): {e}") from None
    if not isinstance(cases, list) or not all(
        isinstance(c, dict) and isinstance(c.get("input"), str) and isinstance(c.get("output"), str)
        for c in cases
    ):
        raise row.fail(column, "expected a list of {'input': text, 'output': text, 'testtype': ...}")
    return cases


def _functional_test(row: Row, column: str, func_name: str, case: dict[str, Any]) -> str:
    """One LeetCode case as an assertion; its input holds one JSON argument per line."""
    try:
        args = [json.loads(line) for line in case["input"].splitlines() if line.strip()]
        expected = json.loads(case["output"])
    except ValueError as e:
        raise row.fail(column, f"functional test case is not one JSON value per line: {e}") from None
    return (
        f"assert Solution().{func_name}(*__import__('json').loads({json.dumps(args)!r})) "
        f"== __import__('json').loads({json.dumps(expected)!r})"
    )


def _livecodebench(row: Row, seed: int) -> Problem:
    cases = [(c, case) for c in ("public_test_cases", "private_test_cases") for case in decode_cases(row, c)]
    if not cases:
        raise row.fail("public_test_cases", "no test cases (public or private)")
    kinds = {case.get("testtype", "stdin") for _, case in cases}
    starter = str(row.optional("starter_code") or "")
    if kinds == {"stdin"}:
        grader: dict[str, Any] = {
            "type": "code",
            "stdin_tests": [{"input": case["input"], "output": case["output"]} for _, case in cases],
        }
        protocol = "Read the input from stdin and write the answer to stdout."
    elif kinds == {"functional"}:
        metadata = row.optional("metadata") or {}
        if isinstance(metadata, str):
            try:
                metadata = json.loads(metadata or "{}")
            except ValueError as e:
                raise row.fail("metadata", f"not JSON: {e}") from None
        func_name = metadata.get("func_name") if isinstance(metadata, dict) else None
        if not func_name:
            raise row.fail("metadata", "functional test cases need metadata.func_name")
        grader = {"type": "code", "tests": [_functional_test(row, c, func_name, case) for c, case in cases]}
        protocol = "Complete this starter code (class Solution)."
    else:
        raise row.fail(
            "public_test_cases", f"mixed or unknown test types {sorted(kinds)} (stdin, functional)"
        )
    question = row.text("question_content").strip() + "\n\n" + protocol
    if starter.strip():
        question += f"\n\n```python\n{starter.rstrip()}\n```"
    difficulty = row.optional("difficulty")
    return Problem(
        id=row.item_id("question_id"),
        domain="code",
        question=question,
        reference="",  # LiveCodeBench publishes tests, not solutions
        grader=grader,
        difficulty=str(difficulty) if difficulty else None,
        source=row.set_name,
        meta={
            "title": row.optional("question_title"),
            "platform": row.optional("platform"),
            "contest_date": str(row.optional("contest_date") or "") or None,
            "starter_code": starter,
            "tests": len(cases),
        },
    )


HUMANEVAL = StandardSet(
    "humaneval",
    "HumanEval: task_id, prompt, canonical_solution, test, entry_point -> code grader, check(entry_point)",
    ("task_id", "prompt", "canonical_solution", "test", "entry_point"),
    _humaneval,
)
LIVECODEBENCH = StandardSet(
    "livecodebench",
    "LiveCodeBench: question_content, public/private_test_cases (stdin or functional) -> code grader",
    (
        "question_id",
        "question_title",
        "question_content",
        "platform",
        "contest_date",
        "starter_code",
        "difficulty",
        "public_test_cases",
        "private_test_cases",
        "metadata",
    ),  # fmt: skip
    _livecodebench,
)
