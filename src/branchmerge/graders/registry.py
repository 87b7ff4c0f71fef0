"""The explicit grader registry (no import side effects)."""

from __future__ import annotations

from branchmerge.graders.base import Grader
from branchmerge.graders.exact import grade_exact
from branchmerge.graders.numeric import grade_numeric

GRADERS: dict[str, Grader] = {"exact": grade_exact, "numeric": grade_numeric}
