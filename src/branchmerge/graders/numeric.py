"""Numeric answers: the answer must be one number (commas and a trailing period allowed) within tolerance.

Spec: {"type": "numeric", "rel_tol": 0.0, "abs_tol": 0.0}. The whole stripped answer must be the number, so an
answer that merely contains the right number among others does not pass (no partial-credit leaks).
"""

from __future__ import annotations

import math
import re

from branchmerge.graders.base import Grade, Grader, GraderSpec

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def parse_number(text: str) -> float | None:
    s = text.strip().rstrip(".").replace(",", "")
    return float(s) if _NUMBER.fullmatch(s) else None


class NumericSpec(GraderSpec):
    rel_tol: float = 0.0
    abs_tol: float = 0.0


def grade_numeric(answer: str, reference: str, spec: NumericSpec) -> Grade:
    want = parse_number(reference)
    if want is None:
        raise ValueError(f"numeric grader: reference {reference!r} is not a number")
    got = parse_number(answer)
    if got is None:
        return Grade(False, f"not a number: {answer.strip()[:40]!r}")
    ok = math.isclose(got, want, rel_tol=spec.rel_tol, abs_tol=spec.abs_tol)
    return Grade(ok, "" if ok else f"got {got:g}, want {want:g}")


NUMERIC = Grader("numeric", NumericSpec, grade_numeric)
