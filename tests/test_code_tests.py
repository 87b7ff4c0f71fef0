"""The code grader's reading of assert tests (which values the solution is asked for, which checks the grader
makes) and its answers to bad specs: one error naming the field, and in a batch a recorded grader error."""

from __future__ import annotations

from typing import Any

import pytest

from branchmerge.graders import grade, grade_many
from branchmerge.graders.code_eval import ProbeFailed
from branchmerge.graders.code_tests import Plan, TestShapeError, plan_tests, run_check
from branchmerge.graders.code_worker import decode, encode


def _verdicts(plan: Plan, got: list[Any]) -> list[bool]:
    return [run_check(c, {}, got) for c in plan.checks]


def test_mbpp_asserts_become_calls_with_plain_arguments_and_checks_made_here() -> None:
    plan = plan_tests(
        (
            "assert add(1, 2) == 3",
            "assert set(common((3, 4, 5), (5, 4))) == set((4, 5))",
            "assert math.isclose(area(2), 12.56, rel_tol=0.01)",
            "assert abs(candidate_free(1.33) - 0.33) < 1e-6",
        ),
        None,
    )
    calls = [(p.callee, p.args) for p in plan.probes]
    assert calls == [
        ("add", (1, 2)),
        ("common", ((3, 4, 5), (5, 4))),
        ("area", (2,)),
        ("candidate_free", (1.33,)),
    ]
    # The expected values never appear in what the solution is sent.
    assert all(p.expr is None for p in plan.probes)
    assert _verdicts(plan, [3, [5, 4], 12.57, 1.0]) == [True, True, True, False]
    assert _verdicts(plan, [3.0, (4, 5), 13.0, 0.33]) == [True, True, False, True]


def test_humaneval_check_function_binds_candidate_to_the_entry_point() -> None:
    program = (
        "METADATA = {'author': 'jt'}\n\n\ndef check(candidate):\n    # simple cases\n"
        "    assert candidate([1, 2]) == 3, 'message'\n    assert True\n"
        "    for x in range(2, 4):\n        assert candidate([x]) == x\n"
    )
    for tests, entry in (((program,), "total"), ((program + "\ncheck(total)\n",), None)):
        plan = plan_tests(tests, entry)
        assert [(p.callee, p.args) for p in plan.probes] == [
            ("total", ([1, 2],)),
            ("total", ([2],)),
            ("total", ([3],)),
        ]
        assert [c.line for c in plan.checks] == [6, 7, 9, 9]
        assert _verdicts(plan, [3, 2, 3]) == [True, True, True, True]
        assert _verdicts(plan, [3, 2, 4]) == [True, True, True, False]


def test_livecodebench_functional_layout_and_results_held_in_variables() -> None:
    lcb = (
        "assert Solution().twoSum(*__import__('json').loads('[[2, 7, 11], 9]')) "
        "== __import__('json').loads('[0, 1]')"
    )
    plan = plan_tests((lcb, "r = f(3)\nassert r == 9 and r > 0"), None)
    assert [(p.callee, p.args) for p in plan.probes] == [("Solution().twoSum", ([2, 7, 11], 9)), ("f", (3,))]
    assert _verdicts(plan, [[0, 1], 9]) == [True, True]
    assert _verdicts(plan, [(0, 1), 9]) == [False, True]  # a tuple is not the list the test wants


def test_expressions_only_the_solution_can_evaluate_are_sent_whole_without_comparisons() -> None:
    plan = plan_tests(("assert [f(10) for f in make(3)] == [0, 10, 20]",), None)
    (probe,) = plan.probes
    assert probe.expr == "[f(10) for f in make(3)]" and "20" not in probe.expr
    with pytest.raises(TestShapeError, match=r"tests\[0\] line 1: a comparison inside"):
        plan_tests(("assert all(f(x) == y for x, y in [(1, 2)])",), None)


def test_a_probe_that_failed_fails_the_checks_that_need_it() -> None:
    plan = plan_tests(("assert f(1) == 1", "assert True"), None)
    with pytest.raises(ProbeFailed):
        run_check(plan.checks[0], {}, [ProbeFailed("raised ValueError")])
    assert run_check(plan.checks[1], {}, [ProbeFailed("raised ValueError")])


@pytest.mark.parametrize(
    ("tests", "message"),
    [
        (
            ["assert f(1) == 1", "while True:\n    pass"],
            r"tests\[1\] line 1: unsupported statement \(While\)",
        ),
        (["x = [1]\nf(x)\nassert x == [1, 2]"], r"tests\[0\] line 2: a call whose result no assert checks"),
        (
            ["import numpy as np\nassert np.allclose(f(1), [1])"],
            r"tests\[0\] line 2: module 'np' is not available",
        ),
        (
            ["def helper(x):\n    return x\nassert f(1) == helper(1)"],
            r"tests\[0\] line 1: unsupported statement",
        ),
        (["assert f(1) ==="], r"tests\[0\] line 1: not valid Python"),
        (["assert 1 + 1 == 2"], r"no test calls a function of the solution"),
        (["for x in f(3):\n    assert x"], r"a loop over values the solution returns"),
        (["for x in range(10**6):\n    assert f(x) == x"], r"a loop of more than 10000 iterations"),
        (["assert f(math) == 1"], r"an argument is not plain data"),
        (["assert f(1) == (2).__class__"], r"attributes starting with '_'"),
        (["assert close(f(1), 12.5)"], r"a solution function applied to another's result"),
        (["def check(candidate):\n    assert candidate(1) == 1"], r"has no entry_point"),
    ],
)
def test_unsupported_shapes_are_errors_naming_test_and_line(tests: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        grade("def f(x):\n    return x\n", "", {"type": "code", "tests": tests})


def test_bad_specs_name_the_field_and_a_batch_records_them_and_goes_on() -> None:
    with pytest.raises(ValueError, match=r"code grader spec: tset: unknown key"):
        grade("x", "", {"type": "code", "tset": ["assert f(1) == 1"]})
    with pytest.raises(ValueError, match=r"code grader spec: stdin_tests\[0\]\.output: Field required"):
        grade("x", "", {"type": "code", "stdin_tests": [{"input": "1"}]})
    with pytest.raises(ValueError, match=r"code grader spec: .*needs non-empty 'tests'"):
        grade("x", "", {"type": "code", "tests": []})
    good = {"type": "code", "tests": ["assert f(2) == 4"]}
    items = [
        ("def f(x):\n    return 2 * x\n", "", good),
        ("def f(x):\n    return 2 * x\n", "", {"type": "code", "tests": ["print(f(2))\nf(2)"]}),
        (
            "def f(x):\n    return 2 * x\n",
            "",
            {"type": "code", "timeout_s": -1, "tests": ["assert f(2) == 4"]},
        ),
        ("def f(x):\n    return x + 1\n", "", good),
    ]
    grades = grade_many(items, errors="record")
    assert [g.passed for g in grades] == [True, False, False, False]
    assert grades[1].error and "tests[0] line 2: a call whose result no assert checks" in grades[1].error
    assert grades[2].error and "timeout_s: Input should be greater than 0" in grades[2].error
    assert grades[3].error is None and "returned f(2) -> 3" in grades[3].detail


def test_wire_format_is_exact_plain_data_both_ways() -> None:
    value = [1, 2.5, "s", None, True, (1, [2]), {3, 4}, frozenset({5}), {"k": (6,)}, b"\x00", 1 + 2j]
    assert decode(encode(value)) == value
    back = decode(encode(value))
    assert type(back[5]) is tuple and type(back[6]) is set and type(back[8]) is dict

    class Sneaky(int):
        pass

    for bad in (Sneaky(1), [Sneaky(1)], object(), len):
        with pytest.raises(TypeError, match="not plain data"):
            encode(bad)
    for forged in ({"tuple": [1], "x": 2}, {"list": [1]}, {"complex": ["1", 2]}, {"dict": [[1]]}):
        with pytest.raises(ValueError):
            decode(forged)
    with pytest.raises(TypeError):
        decode({"set": [[1]]})  # an unhashable member


def test_values_returned_cannot_blow_up_the_grader() -> None:
    plan = plan_tests(
        (
            "assert f(1) * 10**9 == 'x'",
            "assert 2 ** f(2) > 0",
            "assert len(list(range(f(3)))) > 0",
            "assert pow(3, f(4)) > 0",
        ),
        None,
    )
    values = (["ab" * 100, 0, 0, 0], [0, 10**9, 0, 0], [0, 0, 10**12, 0], [0, 0, 0, 10**9])
    for check, got in zip(plan.checks, values, strict=True):
        with pytest.raises(OverflowError):
            run_check(check, {}, got)


def test_the_tests_own_comprehensions_random_draws_and_prints_are_read_here() -> None:
    program = (
        "def check(candidate):\n    print\n    import random\n"
        "    xs = list(range(-5, 6))\n    want = sum([x * x for x in xs if x % 2 != 0 and x > 0])\n"
        "    assert candidate(xs) == want\n"
        "    for _ in range(3):\n        a = random.randint(0, 100)\n        assert candidate([a]) == a * a * (a % 2)\n"
    )
    plan = plan_tests((program,), "odd_squares")
    assert plan.probes[0].args == (list(range(-5, 6)),)
    again = plan_tests((program + "\n",), "odd_squares")  # read afresh: the same seeded draws
    assert [p.args for p in again.probes] == [p.args for p in plan.probes]
    draws = [p.args[0][0] for p in plan.probes[1:]]
    right = [35] + [a * a * (a % 2) for a in draws]
    assert _verdicts(plan, right) == [True] * 4
    assert _verdicts(plan, [34, *right[1:]]) == [False, True, True, True]
