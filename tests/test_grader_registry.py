"""The grader plug-in shape: one object per grader (name, spec model, run, needs_reference, needs_judge) in an
explicit registry; raw specs are validated against the model before the grader runs."""

from __future__ import annotations

import pytest

from branchmerge.graders import GRADERS, Grader, GraderSpec, grade, grade_many, needs_reference


def test_every_registered_grader_is_a_plugin_under_its_own_name() -> None:
    assert sorted(GRADERS) == sorted(
        ["exact", "numeric", "math", "choice", "regex", "code", "sql", "plan", "constraints", "judge"]
    )
    for name, g in GRADERS.items():
        assert isinstance(g, Grader) and g.name == name and issubclass(g.spec, GraderSpec)
    assert [n for n, g in GRADERS.items() if g.needs_judge] == ["judge"]


@pytest.mark.parametrize(
    ("spec", "needed"),
    [
        ({"type": "exact"}, True),
        ({}, True),
        ({"type": "math"}, True),
        ({"type": "code", "tests": ["assert f(1) == 1"]}, False),
        ({"type": "sql", "schema": "CREATE TABLE t(x)"}, True),
        ({"type": "sql", "schema": "CREATE TABLE t(x)", "expected": [[1]]}, False),
        ({"type": "regex"}, True),
        ({"type": "regex", "pattern": "a+"}, False),
        ({"type": "code", "tests": "not a list", "bogus": 1}, False),  # a bad spec reaches its grader
        ({"type": "no-such-grader"}, True),
    ],
)
def test_needs_reference_follows_the_validated_spec(spec: dict, needed: bool) -> None:
    assert needs_reference(spec) is needed


def test_a_bad_spec_names_grader_and_field_before_any_grading() -> None:
    with pytest.raises(ValueError, match=r"^numeric grader spec: rel_tol: Input should be a valid number"):
        grade("1", "1", {"type": "numeric", "rel_tol": "loose"})
    with pytest.raises(ValueError, match=r"^code grader spec: timeout_s: Input should be greater than 0"):
        grade("x", "", {"type": "code", "tests": ["assert f(1) == 1"], "timeout_s": 0})
    grades = grade_many(
        [("1", "1", {"type": "numeric", "rel_tol": "loose"}), ("2", "2", {"type": "numeric"})],
        errors="record",
    )
    assert grades[0].error and "rel_tol" in grades[0].error and grades[1].passed
    # Specs keep working with keys the model does not list (graders other than code accept them).
    assert grade("1.0", "1", {"type": "numeric", "note": "written before the model listed it"}).passed


KNAPSACK = {"type": "plan", "kind": "knapsack", "capacity": 5, "optimum": 9,
            "items": [{"name": "a", "weight": 3, "value": 5}, {"name": "b", "weight": 2, "value": 4},
                      {"name": "c", "weight": 4, "value": 6}]}  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "reference", "spec", "passed"),
    [
        # the final answer after </think> is graded, not the thinking before it
        ("<think>Perhaps Lyon.</think>\nParis", "Paris", {"type": "exact"}, True),
        ("<think>Paris, surely.</think>\nLyon", "Paris", {"type": "exact"}, False),
        ("<think>0.5 is one half</think>0.50", "-?0*\\.50*", {"type": "regex"}, True),
        ("<think>Plan: b, c</think>\nPlan: a, b", "", KNAPSACK, True),
        ("<think>Plan: a, b</think>\nPlan: b, c", "", KNAPSACK, False),
        # the right answer only inside the thinking is no answer
        ("Plan: a, b</think>", "", KNAPSACK, False),
        ("Paris</think>", "Paris", {"type": "exact"}, False),
        # cut off while thinking: no answer, whatever the thinking holds
        ("<think>Paris", "Paris", {"type": "exact"}, False),
        ("<think>Plan: a, b", "", KNAPSACK, False),
        ("<think>0.5", "-?0*\\.50*", {"type": "regex"}, False),
        # a second <think> opened after the last </think> and never closed
        ("<think>x</think>Paris<think>Lyon", "Paris", {"type": "exact"}, True),
    ],
)
def test_every_grader_grades_only_the_text_after_the_last_think_close(
    answer: str, reference: str, spec: dict, passed: bool
) -> None:
    g = grade(answer, reference, spec)
    assert g.passed is passed, g.detail
    if answer.startswith("<think>") and "</think>" not in answer:
        assert g.detail == "no answer: the output was cut off inside <think>"
