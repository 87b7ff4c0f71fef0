"""The `judge` grader: an open-ended answer graded against a written rubric by an LLM judge.

The judging itself (pinned prompts, the judge endpoint and its verdict cache, parsing) is `branchmerge.judge`
(`judge/rubric.py` documents the spec); this module turns its rulings into Grades.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from branchmerge.graders.base import Grade, Grader, GraderSpec
from branchmerge.judge.rubric import Item, Ruling, rule_many


def _grade(r: Ruling) -> Grade:
    return Grade(r.passed, r.detail, error=r.error)


def judge_many(items: Sequence[Item], show_progress: bool = False) -> list[Grade]:
    """Grade many (answer, reference, spec) judge items at once, in order, one batch per judge."""
    return [_grade(r) for r in rule_many(items, show_progress)]


class JudgeSpec(GraderSpec):
    """Checked by `branchmerge.judge.rubric` (`_request`: question, rubric, threshold; `_setup`: judge) when judged."""

    question: Any = None
    rubric: Any = None
    item: str = "-"
    threshold: Any = None
    prompt_version: int | None = None
    judge: Any = None


def grade_judge(answer: str, reference: str, spec: JudgeSpec) -> Grade:
    return judge_many([(answer, reference, spec.model_dump(exclude_unset=True))])[0]


JUDGE = Grader("judge", JudgeSpec, grade_judge, needs_judge=True)
