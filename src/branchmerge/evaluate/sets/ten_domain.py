"""The 10-domain benchmark of the two-teacher SLERP seed, as its Parquet file publishes it (README, "Evaluation":
`ten-domain`): columns question_category, difficulty_level, question, guide_text, answer, success_criteria.

The file is accepted as is: the domain is the category in snake case ("Logical Reasoning" ->
"logical_reasoning"), the level is difficulty_level (1-10, or "Level N"), and guide_text, success_criteria and
the category as written are kept in meta. The grader is chosen per category where the reference allows it:
a mathematics category gets the math grader when its answer parses as math; every other item gets exact match
(whitespace collapsed, case-insensitive). The seed graded pass/fail against `success_criteria`, which free-text
answers (ethics, scenarios, writing) need a judge for; `meta.grader_choice` says which grader each item got and
why, so such items can be re-graded with a judge from meta. The file has no id column: ids are
"<domain>-L<level>-<row>".
"""

from __future__ import annotations

import re

from branchmerge.evaluate.sets.base import Row, StandardSet, parse_level
from branchmerge.graders.math import grade_math
from branchmerge.records import Problem


def domain_name(category: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_")


def choose_grader(domain: str, reference: str) -> tuple[dict[str, object], str]:
    """(grader spec, why that one)."""
    exact = {"type": "exact", "case_sensitive": False}
    if "math" not in domain:
        return exact, "exact: no programmatic grader for this category (the seed used success_criteria)"
    try:
        grade_math(reference, reference, {"type": "math"})
    except ValueError:
        return exact, "exact: a math category whose answer does not parse as math"
    return {"type": "math"}, "math: a math category whose answer parses as math"


def _ten_domain(row: Row, seed: int) -> Problem:
    category = row.text("question_category").strip()
    domain = domain_name(category)
    if not domain:
        raise row.fail("question_category", f"{category!r} has no letters or digits to name a domain")
    level = parse_level(row, "difficulty_level")
    reference = row.text("answer")
    grader, why = choose_grader(domain, reference)
    return Problem(
        id=f"{domain}-L{level}-{row.index}",
        domain=domain,
        question=row.text("question"),
        reference=reference,
        grader=grader,
        level=level,
        source=row.set_name,
        meta={
            "category": category,
            "guide_text": row.optional("guide_text"),
            "success_criteria": row.optional("success_criteria"),
            "grader_choice": why,
        },
    )


TEN_DOMAIN = StandardSet(
    "ten-domain",
    "the seed's 10-domain Parquet: question_category, difficulty_level, question, guide_text, answer, "
    "success_criteria -> per-category grader",
    ("question_category", "difficulty_level", "question", "guide_text", "answer", "success_criteria"),
    _ten_domain,
    "train",
)
