"""Exact match after normalisation: whitespace collapsed, optional case folding, optional regex extraction.

Spec: {"type": "exact", "case_sensitive": true, "extract": "<regex with one group>"}.
"""

from __future__ import annotations

import re

from branchmerge.graders.base import Grade, Grader, GraderSpec


class ExactSpec(GraderSpec):
    case_sensitive: bool = True
    extract: str | None = None  # a regex; its first group (else the whole match) is the answer


def normalize(text: str, case_sensitive: bool = True) -> str:
    text = " ".join(text.split())
    return text if case_sensitive else text.casefold()


def grade_exact(answer: str, reference: str, spec: ExactSpec) -> Grade:
    case = spec.case_sensitive
    pattern = spec.extract
    if pattern:
        m = re.search(pattern, answer)
        if not m:
            return Grade(False, f"no match for /{pattern}/")
        answer = m.group(1) if m.groups() else m.group(0)
    got, want = normalize(answer, case), normalize(reference, case)
    if not got:
        return Grade(False, "empty answer")
    return Grade(got == want, "" if got == want else f"got {got!r}, want {want!r}")


EXACT = Grader("exact", ExactSpec, grade_exact)
