"""Regular-expression answers: the whole stripped answer must match the pattern (`re.fullmatch`).

Spec: {"type": "regex", "pattern": "...", "case_sensitive": true}. When the spec has no "pattern", the problem's
reference is the pattern, so datasets whose answers are patterns (e.g. `-?0*\\.50*` for "0.5 in any form") need no
per-item spec; when it has one, the reference is not used (it may hold a readable answer for reports).
An answer that merely contains a match does not pass: fullmatch anchors the pattern at both ends.
"""

from __future__ import annotations

import re

from branchmerge.graders.base import Grade, Grader, GraderSpec


class RegexSpec(GraderSpec):
    pattern: str | None = None  # None: the reference is the pattern
    case_sensitive: bool = True


def grade_regex(answer: str, reference: str, spec: RegexSpec) -> Grade:
    pattern = reference if spec.pattern is None else spec.pattern
    flags = 0 if spec.case_sensitive else re.IGNORECASE
    try:
        compiled = re.compile(pattern, flags)
    except re.error as e:
        raise ValueError(f"regex grader: pattern {pattern!r} is not a valid regular expression: {e}") from e
    got = answer.strip()
    if not got:
        return Grade(False, "empty answer")
    ok = compiled.fullmatch(got) is not None
    return Grade(ok, "" if ok else f"{got[:60]!r} does not match /{pattern}/")


REGEX = Grader("regex", RegexSpec, grade_regex, needs_reference=lambda spec: spec.pattern is None)
