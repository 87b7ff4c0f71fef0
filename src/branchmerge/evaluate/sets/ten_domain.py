"""The 10-domain benchmark of the two-teacher SLERP seed, as its Parquet file publishes it:
columns question_category, difficulty_level, question, guide_text, answer, success_criteria.

The file is accepted as is: the domain is the category in snake case ("Logical Reasoning" ->
"logical_reasoning"), the level is difficulty_level (1-10, or "Level N"), and guide_text, success_criteria and
the category as written are kept in meta. The file has no id column: ids are "<domain>-L<level>-<row>".

Graders, by category (`choose_grader`; `meta.grader_choice` says which one each item got and why):
- a mathematics category whose answer parses as math: the math grader (math-verify), any equal form passes;
- every other item (logic, SQL, Python debugging, science, causal reasoning, scenarios, ethics, writing,
  planning, and a mathematics item whose answer is prose): the LLM judge (graders/judge.py), which reads the
  question, the reference answer and a rubric made of the item's success_criteria, so a right answer in other
  words passes. The seed graded these items pass/fail against success_criteria; whole-answer exact match would
  fail every right free-text answer written differently from the reference. Judged items need a judge at
  evaluation time (`eval --judge URL --judge-model NAME`); without one, `eval` stops before any request.
"""

from __future__ import annotations

import re

from branchmerge.evaluate.sets.base import Row, StandardSet, parse_level
from branchmerge.graders import grade
from branchmerge.judge import judge_spec
from branchmerge.records import Problem


def domain_name(category: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_")


def rubric(criteria: str) -> str:
    """The judge's rubric for a free-text item: the seed's success criteria, and the reference as the model
    answer to compare with."""
    base = (
        "Pass when the answer reaches the same final answer or conclusion as the reference answer (any wording, "
        "any order of points); fail a wrong, missing, hedged or self-contradicting answer."
    )
    return f"{base} The item's success criteria: {criteria.strip()}" if criteria.strip() else base


def choose_grader(
    domain: str, reference: str, question: str, criteria: str, item: str
) -> tuple[dict[str, object], str]:
    """(grader spec, why that one)."""
    if "math" in domain:
        try:
            grade(reference, reference, {"type": "math"})
        except ValueError:
            pass
        else:
            return {"type": "math"}, "math: a math category whose answer parses as math"
        why = "judge: a math category whose answer does not parse as math, judged against success_criteria"
    else:
        why = "judge: free-text answers, judged against the reference and success_criteria"
    return judge_spec(question, rubric(criteria), item), why


def _ten_domain(row: Row, seed: int) -> Problem:
    category = row.text("question_category").strip()
    domain = domain_name(category)
    if not domain:
        raise row.fail("question_category", f"{category!r} has no letters or digits to name a domain")
    level = parse_level(row, "difficulty_level")
    reference = row.text("answer")
    question = row.text("question")
    item = f"{domain}-L{level}-{row.index}"
    criteria = str(row.optional("success_criteria") or "")
    grader, why = choose_grader(domain, reference, question, criteria, item)
    return Problem(
        id=item,
        domain=domain,
        question=question,
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
    "success_criteria -> math grader for math answers, LLM judge for the rest",
    ("question_category", "difficulty_level", "question", "guide_text", "answer", "success_criteria"),
    _ten_domain,
    "train",
)
