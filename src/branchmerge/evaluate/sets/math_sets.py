"""Math sets: MATH500 (and the MATH layout it comes from), AIME 2024/2025, GSM8K.

- MATH500 (HuggingFaceH4/MATH-500, `test.jsonl`): problem, solution, answer, subject, level (1-5), unique_id.
  The original MATH files (hendrycks) have `type` for the subject, "Level N" levels and no `answer`: the
  reference is then the last `\\boxed{...}` of the solution. Graded by the math grader (math-verify).
- AIME (HuggingFaceH4/aime_2024: id, problem, solution, answer, url, year; Maxwell-Jia/AIME_2024: ID, Problem,
  Solution, Answer; AIME 2025 copies: id/problem/answer or question/answer). Every AIME answer is an integer
  0-999; anything else is a data error named by row and column. Graded by the math grader.
- GSM8K (openai/gsm8k): question, answer, where the answer is the worked solution ending in "#### N". The
  reference is N with thousands separators removed. The published questions say nothing about the answer's form,
  so the question sent ends with `GSM8K_FORMAT` (reason step by step, final answer in `\\boxed{}`), and the
  numeric grader reads the final number of the answer (`"final": true`: the last `\\boxed{}`, else "#### N",
  else "the answer is N", else the last number; currency and units allowed), exact, no tolerance.
"""

from __future__ import annotations

from branchmerge.evaluate.sets.base import Row, StandardSet, parse_level
from branchmerge.graders.numeric import parse_number
from branchmerge.records import Problem

GSM8K_FORMAT = "Please reason step by step, and put your final answer (a number) within \\boxed{}."


def last_boxed(text: str) -> str | None:
    """The contents of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None when there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def _math500(row: Row, seed: int) -> Problem:
    if row.column("answer") is not None:
        reference = row.text("answer")
    else:
        boxed = last_boxed(row.text("solution"))
        if not boxed:
            raise row.fail("solution", "no 'answer' column and no \\boxed{...} answer in the solution")
        reference = boxed
    return Problem(
        id=row.item_id("unique_id", "id"),
        domain="math",
        question=row.text("problem"),
        reference=reference,
        grader={"type": "math"},
        level=parse_level(row, "level"),
        source=row.set_name,
        meta={"subject": row.optional("subject", "type"), "solution": row.optional("solution")},
    )


def aime_answer(row: Row) -> str:
    value = row.get("answer", "Answer")
    column = row.column("answer", "Answer") or "answer"
    text = str(value).strip()
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    if not text.isdigit() or not 0 <= int(text) <= 999:
        raise row.fail(column, f"AIME answers are integers 0-999, got {value!r}")
    return str(int(text))


def _aime(row: Row, seed: int) -> Problem:
    return Problem(
        id=row.item_id("id", "ID"),
        domain="math",
        question=row.text("problem", "Problem", "question"),
        reference=aime_answer(row),
        grader={"type": "math"},
        source=row.set_name,
        meta={
            "solution": row.optional("solution", "Solution"),
            "year": row.optional("year"),
            "url": row.optional("url"),
        },
    )


def _gsm8k(row: Row, seed: int) -> Problem:
    worked = row.text("answer")
    if "####" not in worked:
        raise row.fail("answer", f"no '#### N' final answer in {worked.strip()[-60:]!r}")
    solution, _, final = worked.rpartition("####")
    reference = final.strip().replace(",", "")
    if parse_number(reference) is None:
        raise row.fail("answer", f"the final answer after '####' is not a number: {final.strip()[:40]!r}")
    return Problem(
        id=row.item_id("id"),
        domain="math",
        question=f"{row.text('question').rstrip()}\n\n{GSM8K_FORMAT}",
        reference=reference,
        grader={"type": "numeric", "final": True},
        source=row.set_name,
        meta={"solution": solution.strip()},
    )


MATH500 = StandardSet(
    "math500",
    "MATH500 / MATH: problem, answer (or the solution's last \\boxed{}), subject, level -> math grader",
    ("problem", "solution", "answer", "subject", "type", "level", "unique_id", "id"),
    _math500,
)
_AIME_COLUMNS = (
    "id", "ID", "problem", "Problem", "question", "answer", "Answer", "solution", "Solution", "year", "url",
)  # fmt: skip
AIME = StandardSet(
    "aime", "AIME: problem, integer answer 0-999 -> math grader", _AIME_COLUMNS, _aime, "train"
)
AIME2024 = StandardSet("aime2024", "AIME 2024 (as aime)", _AIME_COLUMNS, _aime, "train")
AIME2025 = StandardSet("aime2025", "AIME 2025 (as aime)", _AIME_COLUMNS, _aime, "train")
GSM8K = StandardSet(
    "gsm8k",
    "GSM8K: question (+ a final-answer format), answer ending '#### N' -> numeric grader, final number, on N",
    ("question", "answer", "id"),
    _gsm8k,
)
