"""Numeric answers: one number, compared within tolerance.

Spec: {"type": "numeric", "rel_tol": 0.0, "abs_tol": 0.0, "final": false}.

- Whole-answer mode (the default): the stripped answer must be the number, optionally with a currency sign before
  it and a unit or percent sign after it ("1,234", "42.", "$18", "\\$18.90", "18 dollars", "25%"). An answer that
  merely contains the right number among others does not pass (no partial-credit leaks).
- Final-answer mode (`"final": true`, what GSM8K items use, whose worked answers are prose): the number is read
  from the answer's final statement: the last `\\boxed{}`, else what follows the last "####", else what follows
  the last "answer is" / "answer:", else the last number of the text. In that statement the first number is the
  answer, with its currency and units ("The answer is $18 per day." reads 18), or the first after the statement's
last "=" ("The answer is 5 + 3 = 8" reads 8), never a number after "not"; a statement that offers two
  different numbers as alternatives ("18 or 20", "between 18 and 20") fails as ambiguous.

In both modes only the final answer is graded (`base.grade`, for every grader): the text after the last
`</think>`; an answer cut off inside `<think>`, or with nothing after `</think>`, fails as no answer (a
`\\boxed{}` inside the thinking counts for nothing). Thousands separators, `\\frac{a}{b}`, `a/b` and the Unicode
minus are read as numbers.
"""

from __future__ import annotations

import math
import re

from branchmerge.graders.base import Grade, Grader, GraderSpec

_NUM = r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+−]?\.\d+"
_NUMBER = re.compile(rf"(?<![\w.])(?:{_NUM})(?:\s*/\s*(?:{_NUM}))?(?![\d])")
_CURRENCY = r"(?:\\?\$|€|£|¥|USD|EUR|GBP)"
_UNIT_WORD = r"(?!(?:or|and|to|about|maybe)\b)[A-Za-z][A-Za-z²³/]*"  # "dollars", "km/h"; never a hedge
_UNIT = rf"(?:%|\\%|°\w*|{_UNIT_WORD}(?:\s+{_UNIT_WORD}){{0,2}})"
_WHOLE = re.compile(rf"\s*{_CURRENCY}?\s*(?P<n>(?:{_NUM})(?:\s*/\s*(?:{_NUM}))?)\s*{_UNIT}?\s*\.?\s*")
_MARKER = re.compile(r"####|\b(?:final\s+)?answer\s*(?:is|:|=)", re.IGNORECASE)
_ALTERNATIVES = re.compile(
    rf"(?:{_NUM})\s*\S{{0,12}}\s+or\s+\S{{0,3}}\s*(?:{_NUM})|\bbetween\s+\S{{0,3}}\s*(?:{_NUM})\s*\S{{0,12}}\s+and\s",
    re.IGNORECASE,
)
_RULED_OUT = re.compile(rf"\bnot\s+{_CURRENCY}?\s*(?:{_NUM})", re.IGNORECASE)
_LATEX = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")


def _value(token: str) -> float:
    token = token.replace(",", "").replace("−", "-").replace(" ", "")
    if "/" in token:
        top, bottom = token.split("/")
        return float(top) / float(bottom) if float(bottom) else math.nan
    return float(token)


def parse_number(text: str) -> float | None:
    """The number that is the whole of `text` (currency before, a unit or % after allowed), or None."""
    m = _WHOLE.fullmatch(text)
    return _value(m.group("n")) if m else None


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _plain(text: str) -> str:
    text = _FRAC.sub(r"\1/\2", _LATEX.sub(r" \1 ", text))
    return re.sub(r"\\[,!;: ]|\\left|\\right|[{}]", " ", text).replace("\\$", "$")


def final_number(answer: str) -> tuple[float | None, str]:
    """(the number the answer's final statement gives, "") or (None, why there is none)."""
    boxed = _last_boxed(answer)
    if boxed is not None:
        statement = _plain(boxed)
    else:
        markers = list(_MARKER.finditer(answer))
        text = _plain(answer[markers[-1].end() :] if markers else answer)
        if markers:  # the statement the marker opens: up to the end of its line or sentence
            statement = re.split(r"\n|(?<!\d)\.(?!\d)|[!?;]", text.strip(), maxsplit=1)[0]
        else:  # no marker: the last sentence that holds a number
            numbered = [s for s in re.split(r"\n|(?<!\d)\.(?!\d)|[!?;]", text) if _NUMBER.search(s)]
            if not numbered:
                return None, "no number in the answer"
            statement = numbered[-1]
            found = _NUMBER.findall(statement)
            statement = (
                statement[statement.rfind(found[-1]) :] if not _ALTERNATIVES.search(statement) else statement
            )
    statement = _RULED_OUT.sub(" ", statement)  # "the answer is not 18, it's 20": 18 is ruled out
    if "=" in statement and _NUMBER.search(statement.rpartition("=")[2]):
        statement = statement.rpartition("=")[2]  # "the answer is 5 + 3 = 8": the result after the last "="
    numbers = _NUMBER.findall(statement)
    if not numbers:
        return None, f"no number in the final statement {statement.strip()[:40]!r}"
    if _ALTERNATIVES.search(statement) and len({_value(n) for n in numbers}) > 1:
        return None, f"two different numbers offered: {statement.strip()[:40]!r}"
    return _value(numbers[0]), ""


class NumericSpec(GraderSpec):
    rel_tol: float = 0.0
    abs_tol: float = 0.0
    final: bool = False


def grade_numeric(answer: str, reference: str, spec: NumericSpec) -> Grade:
    want = parse_number(reference)
    if want is None:
        raise ValueError(f"numeric grader: reference {reference!r} is not a number")
    if spec.final:
        got, why = final_number(answer)
        if got is None:
            return Grade(False, why)
    else:
        got = parse_number(answer)
        if got is None:
            return Grade(False, f"not a number: {answer.strip()[:40]!r}")
    ok = math.isclose(got, want, rel_tol=spec.rel_tol, abs_tol=spec.abs_tol)
    return Grade(ok, "" if ok else f"got {got:g}, want {want:g}")


NUMERIC = Grader("numeric", NumericSpec, grade_numeric)
