"""Math answers by symbolic equivalence, with HuggingFace's math-verify (the parser and comparer behind the
Open R1 and lighteval math rewards).

Spec: {"type": "math", "timeout_s": 5}. The reference and the answer are each parsed from `\\boxed{...}`, LaTeX
(`$...$`, or bare LaTeX such as `\\frac{1}{2}`) or a plain number/expression, then compared by
`math_verify.verify` (numbers to 6 decimals, fractions, sets, intervals, equations, ...): "\\boxed{1/2}", "0.5" and
"\\frac{1}{2}" are the same answer. An answer with nothing parseable fails with a detail saying so; a reference
with nothing parseable is a data error and raises ValueError (as the numeric grader does).

Only the final answer is graded (`base.grade`, for every grader): the text after the last `</think>`; an
answer that opened `<think>` and never closed it, or has nothing after `</think>`, fails as no answer, even when
a `\\boxed{}` sits inside the thinking. Matrices and vectors (`\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}`) compare as
matrices, entry by entry and shape included, never as their last number; an escaped dollar (`\\$18.90`) is a
currency sign, and units in `\\text{}` are ignored by math-verify (`5\\text{ cm}` is 5).

Time limits: math-verify enforces its timeouts with `signal.alarm`, which only works in a process's main thread
and raises ValueError anywhere else (a server's thread pool, `grade` called from a ThreadPoolExecutor). So the
grader passes `timeout_s` to math-verify only in the main thread and `None` (no limit) elsewhere. Grading many
answers with `grade_many` runs math in worker processes, where each task runs in the worker's main thread, so the
limit holds there too.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from branchmerge.graders.base import Grade, Grader, GraderSpec

# A bare string worth retrying as `$...$`: has LaTeX or math syntax, or is a lone variable. Plain words are not
# retried, since math-verify would read "blah" as the product b*a*h*l.
_MATHY = re.compile(r"[\\^_{}=+\-*/\d]|^\s*[A-Za-z]\s*$")
_WORD = re.compile(r"[A-Za-z]{3,}")
# LaTeX that names things without being prose: environments (pmatrix), text and roman runs (units).
_LATEX_NAMES = re.compile(r"\\(?:begin|end|text|mathrm|textbf|mbox|operatorname)\s*\{[^{}]*\}|\\[A-Za-z]+")


def _bare_math(text: str) -> bool:
    """Math with no delimiters and no prose (`10\\sqrt{2}`, `[21, 71)`, `x^2 + 36x`): math-verify's plain-text
    extraction reads such a string as its last number, so it is parsed as `$...$` first."""
    if "$" in text or "\\boxed" in text or not _MATHY.search(text):
        return False
    return not _WORD.search(_LATEX_NAMES.sub("", text))


class MathSpec(GraderSpec):
    timeout_s: int = 5


def _limit(spec: MathSpec) -> int | None:
    if threading.current_thread() is not threading.main_thread():
        return None  # signal.alarm is main-thread only (see the module docstring)
    return spec.timeout_s


def parse_math(text: str, timeout_s: int | None) -> list[Any]:
    """math-verify's parse of `text` ([sympy object, extracted string]), or [] when no math object parses."""
    from math_verify import parse

    def attempt(s: str) -> list[Any]:
        found = parse(s, parsing_timeout=timeout_s)  # type: ignore[arg-type]
        return list(found) if any(not isinstance(x, str) for x in found) else []

    if "\\$" in text and "$" not in text.replace("\\$", ""):
        text = text.replace("\\$", "")  # a currency sign, not a delimiter: "\\$18.90" is 18.90
    wrapped = f"${text.strip()}$"
    if _bare_math(text):
        return attempt(wrapped) or attempt(text)
    found = attempt(text)
    if not found and "$" not in text and _MATHY.search(text):
        found = attempt(wrapped)
    return found


def grade_math(answer: str, reference: str, spec: MathSpec) -> Grade:
    from math_verify import verify

    limit = _limit(spec)
    gold = parse_math(reference, limit)
    if not gold:
        raise ValueError(f"math grader: reference {reference!r} could not be parsed as math")
    got = parse_math(answer, limit)
    if not got:
        return Grade(False, f"could not parse the answer as math: {answer.strip()[-60:]!r}")
    ok = verify(gold, got, timeout_seconds=limit)
    return Grade(ok, "" if ok else f"got {got[-1]!s:.60}, want {gold[-1]!s:.60}")


MATH = Grader("math", MathSpec, grade_math)
