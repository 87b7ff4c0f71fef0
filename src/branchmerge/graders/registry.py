"""The explicit grader registry: every grader plug-in (base.Grader) by name, listed here and nowhere else (no
import side effects). Adding a grader is one module with its spec model and plug-in object, and one line here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from branchmerge.graders.base import Grader
from branchmerge.graders.choice import CHOICE
from branchmerge.graders.code import CODE
from branchmerge.graders.constraints import CONSTRAINTS
from branchmerge.graders.exact import EXACT
from branchmerge.graders.judge import JUDGE
from branchmerge.graders.math import MATH
from branchmerge.graders.numeric import NUMERIC
from branchmerge.graders.plan import PLAN
from branchmerge.graders.regex import REGEX
from branchmerge.graders.sql import SQL

GRADERS: dict[str, Grader[Any]] = {
    g.name: g for g in (EXACT, NUMERIC, MATH, CHOICE, REGEX, CODE, SQL, PLAN, CONSTRAINTS, JUDGE)
}


def unknown_graders(specs: Iterable[Mapping[str, Any]]) -> list[tuple[int, str]]:
    """(index, type) of each grader spec whose `type` (default "exact") is not a registered grader, in order.

    The one check behind every "grader type ... not known" error; each caller words its own message.
    """
    kinds = ((i, spec.get("type", "exact")) for i, spec in enumerate(specs))
    return [(i, kind) for i, kind in kinds if kind not in GRADERS]
