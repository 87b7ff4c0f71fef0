"""Multiple choice: extract the chosen option from free text, then compare it with the reference option.

Spec: {"type": "choice", "choices": ["A", "B", "C", "D"]} (choices optional, default A-D). The answer may be a bare
option ("B"), decorated ("(B)", "**B**", "B.", "\\boxed{B}"), stated ("The answer is B.", "Answer: B) Paris"), or
mentioned once in a sentence. Where several cues appear, the last "answer/option/choice" statement wins. It fails,
with a detail, when no option is found, or when the answer names two different options as the answer
("A or B", "Answer: A, C", or two different options mentioned and no statement saying which).

An uppercase "A" or "I" followed by a lowercase word is read as an English word, not an option ("A good plan
is..."), except right after an "answer is" cue; lowercase options count only right after a cue or alone; an
option right after "not" is ruled out, not chosen ("The answer is not A."). Like every grader, it reads
only the text after the last `</think>` (`base.grade`); an answer cut off inside `<think>` fails.
"""

from __future__ import annotations

import re

from branchmerge.graders.base import Grade, Grader, GraderSpec

DEFAULT_CHOICES = ("A", "B", "C", "D")
_CUE = re.compile(
    r"(?:\b(?:final\s+answer|answer|option|choice)\b(?:\s*(?:is|would\s+be|will\s+be|:|=|-))*|\\boxed\{)",
    re.IGNORECASE,
)
_WORDLIKE = ("A", "I")  # options that are also English words


def _token(choices: tuple[str, ...]) -> str:
    alternation = "|".join(re.escape(c) for c in sorted(choices, key=len, reverse=True))
    return rf"(?<![A-Za-z0-9])(?P<c>{alternation})(?![A-Za-z0-9])"


def _canon(found: str, choices: tuple[str, ...]) -> str | None:
    for c in choices:
        if found.upper() == c.upper():
            return c
    return None


def _after_cue(segment: str, choices: tuple[str, ...]) -> tuple[str | None, str]:
    """The option stated right after a cue, or (None, "") when the cue is followed by something else."""
    tok = _token(choices)
    m = re.match(rf"[\s\*\(\[\{{$\\]*(?:textbf\{{|text\{{)?{tok}", segment, re.IGNORECASE)
    if not m:
        return None, ""
    first = m.group("c")
    rest = segment[m.end() :]
    if first.islower() and re.match(r"\s+[a-z]", rest):
        return None, ""  # "the answer is a prime"
    other = re.match(rf"[\s\*\)\]\}}.]*(?:,|/|&|\bor\b|\band\b)\s*[\*\(\[]*{tok}", rest, re.IGNORECASE)
    if other and _canon(other.group("c"), choices) != _canon(first, choices):
        return None, f"ambiguous: {first} and {other.group('c')} both given as the answer"
    return _canon(first, choices), ""


def extract_choice(answer: str, choices: tuple[str, ...] = DEFAULT_CHOICES) -> tuple[str | None, str]:
    """(option, "") or (None, why not)."""
    text = answer.strip()
    if not text:
        return None, "empty answer"
    for cue in reversed(list(_CUE.finditer(text))):
        found, why = _after_cue(text[cue.end() : cue.end() + 80], choices)
        if found or why:
            return found, why
    bare = re.sub(r"[\s\*\(\)\[\]\.:$]", "", text)
    if (whole := _canon(bare, choices)) is not None:
        return whole, ""
    # an answer that starts with its option: "B) Paris", "**C**. Because ..."
    lead, why = _after_cue(text, choices)
    if why:
        return None, why
    if lead and re.match(rf"[\s\*\(\[]*{_token(choices)}\s*[\)\]\.:\*]", text):
        return lead, ""
    mentioned = []
    for m in re.finditer(_token(choices), text):
        c = m.group("c")
        if c in _WORDLIKE and re.match(r"\s+[a-z]", text[m.end() :]):
            continue
        if re.search(r"\bnot\s+(?:option\s+)?[\(\*]*$", text[: m.start()], re.IGNORECASE):
            continue  # "the answer is not A" rules A out
        mentioned.append(c)
    distinct = sorted(set(mentioned))
    if len(distinct) == 1:
        return distinct[0], ""
    if distinct:
        return None, f"ambiguous: options {', '.join(distinct)} mentioned, none stated as the answer"
    return None, f"no option ({', '.join(choices)}) found in {text[-60:]!r}"


class ChoiceSpec(GraderSpec):
    choices: tuple[str | int, ...] = DEFAULT_CHOICES


def grade_choice(answer: str, reference: str, spec: ChoiceSpec) -> Grade:
    choices = tuple(str(c) for c in spec.choices)
    want = _canon(reference.strip(), choices)
    if want is None:
        raise ValueError(f"choice grader: reference {reference!r} is not one of the choices {list(choices)}")
    got, why = extract_choice(answer, choices)
    if got is None:
        return Grade(False, why)
    return Grade(got == want, "" if got == want else f"got {got}, want {want}")


CHOICE = Grader("choice", ChoiceSpec, grade_choice)
