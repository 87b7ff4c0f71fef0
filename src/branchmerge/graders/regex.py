"""Regular-expression answers: the whole stripped answer must match the pattern (`re.fullmatch`).

Spec: {"type": "regex", "pattern": "...", "case_sensitive": true}. When the spec has no "pattern", the problem's
reference is the pattern, so datasets whose answers are patterns (e.g. `-?0*\\.50*` for "0.5 in any form") need no
per-item spec; when it has one, the reference is not used (it may hold a readable answer for reports).
An answer that merely contains a match does not pass: fullmatch anchors the pattern at both ends.
"""

from __future__ import annotations

import re
from typing import Any

from branchmerge.graders.base import Grade


def grade_regex(answer: str, reference: str, spec: dict[str, Any]) -> Grade:
    pattern = spec.get("pattern", reference)
    flags = 0 if spec.get("case_sensitive", True) else re.IGNORECASE
    try:
        compiled = re.compile(pattern, flags)
    except re.error as e:
        raise ValueError(f"regex grader: pattern {pattern!r} is not a valid regular expression: {e}") from e
    got = answer.strip()
    if not got:
        return Grade(False, "empty answer")
    ok = compiled.fullmatch(got) is not None
    return Grade(ok, "" if ok else f"{got[:60]!r} does not match /{pattern}/")
