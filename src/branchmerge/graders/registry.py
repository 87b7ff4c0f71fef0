"""The explicit grader registry (no import side effects)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from branchmerge.graders.base import Grader
from branchmerge.graders.choice import grade_choice
from branchmerge.graders.code import grade_code
from branchmerge.graders.constraints import grade_constraints
from branchmerge.graders.exact import grade_exact
from branchmerge.graders.judge import grade_judge
from branchmerge.graders.math import grade_math
from branchmerge.graders.numeric import grade_numeric
from branchmerge.graders.plan import grade_plan
from branchmerge.graders.regex import grade_regex
from branchmerge.graders.sql import grade_sql

GRADERS: dict[str, Grader] = {
    "exact": grade_exact,
    "numeric": grade_numeric,
    "math": grade_math,
    "choice": grade_choice,
    "regex": grade_regex,
    "code": grade_code,
    "sql": grade_sql,
    "plan": grade_plan,
    "constraints": grade_constraints,
    "judge": grade_judge,
}


def unknown_graders(specs: Iterable[Mapping[str, Any]]) -> list[tuple[int, str]]:
    """(index, type) of each grader spec whose `type` (default "exact") is not a registered grader, in order.

    The one check behind every "grader type ... not known" error; each caller words its own message.
    """
    kinds = ((i, spec.get("type", "exact")) for i, spec in enumerate(specs))
    return [(i, kind) for i, kind in kinds if kind not in GRADERS]
