"""Constrained writing: check a text against a list of constraints; the detail names the first one it breaks.

Spec: {"type": "constraints", "constraints": [{"kind": "max_words", "n": 60}, {"kind": "acrostic", "word": "SEA"},
...]}. The reference is not used (mdr items keep an example text there that meets every constraint). Kinds:

| kind | fields | passes when |
|---|---|---|
| min_words / max_words / words | n | the text has at least / at most / exactly n words |
| lines / min_lines / max_lines | n | exactly / at least / at most n non-empty lines |
| sentences / min_sentences / max_sentences | n | exactly / at least / at most n sentences |
| include | words | every word or phrase occurs as a whole word (any case; "stars" is not "star") |
| exclude | words | none of them occurs as a whole word (any case) |
| acrostic | word | the first letters of the non-empty lines spell `word` (any case), one line per letter |
| starts_with / ends_with | text | the first / last words of the text are the words of `text` (any case, punctuation ignored) |
| no_letter | letter | the letter never occurs (any case): a lipogram |
| topic | words | at least one of the words occurs (whole word, any case, a plural "-s"/"-es" counts): on topic |
| prose | (none) | a piece of writing: no refusal ("I'm sorry, I can't ..."); function words ("the", "of", ...) |
| | | make at least a fifth of the words and occur in most lines, so a keyword list (word salad) fails |

A word is a run of letters and digits, with inner apostrophes or hyphens ("don't", "well-lit" are one word). A
sentence is a stretch of text with at least one word, ended by `.`, `!`, `?` (or the end of the text), so a
final sentence without its full stop still counts. `describe(constraint)` words each constraint for a prompt, so
the question a model reads and the check it is graded by come from the same spec.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from branchmerge.graders.base import Grade, Grader, GraderSpec

_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
_SENTENCE_END = re.compile(r"[.!?…]+(?=[\s\"'”’)\]]|$)")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if _WORD.search(s)]


def _has_phrase(text: str, phrase: str) -> bool:
    body = r"\s+".join(re.escape(w) for w in phrase.split())
    # whole words as `words` sees them: "gull" is not in "gull's", "well" not in "well-lit"
    edge_l, edge_r = r"(?<![^\W_])(?<![^\W_]['’-])", r"(?!['’-]?[^\W_])"
    return re.search(edge_l + body + edge_r, text, re.IGNORECASE) is not None


# Words that carry grammar rather than content: sentences and verse lines use them, keyword lists do not.
_FUNCTION_WORDS = """a an the and or but nor so yet of in on at to for from by with into onto over under through
    across along past until as than like up down out off about above below near after before while when where then there here
    this that these those it its he she they we i you his her their our my your me him them us is are was were be
    been am has have had do does did will would can could may might must shall should not no all each every some
    any one"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())
_REFUSAL = re.compile(
    r"\b(?:i\s*(?:am|'m|’m)\s+(?:sorry|unable|not able)|i\s+(?:can(?:'|’|no)t|won(?:'|’)t|will not)\s+"
    r"(?:write|help|comply|assist|create|provide|produce)|as an ai\b)",
    re.IGNORECASE,
)
MIN_FUNCTION_SHARE = 0.2


def _topic(text: str, c: dict[str, Any]) -> str:
    found = any(
        _has_phrase(text, w) or _has_phrase(text, w + "s") or _has_phrase(text, w + "es") for w in c["words"]
    )
    return "" if found else f"names none of {', '.join(repr(w) for w in c['words'])}"


def _prose(text: str, c: dict[str, Any]) -> str:
    if _REFUSAL.search(text):
        return "it is a refusal, not the piece"
    ws = [w.casefold() for w in words(text)]
    share = sum(w in FUNCTION_WORDS for w in ws) / max(len(ws), 1)
    if share < MIN_FUNCTION_SHARE:
        return f"it reads as a list of words ({share:.0%} function words such as 'the', 'of', 'and')"
    bare = [line for line in lines(text) if not any(w.casefold() in FUNCTION_WORDS for w in words(line))]
    if 2 * len(bare) > len(
        lines(text)
    ):  # a verse line may be a bare image ("Grey city rain"), not most lines
        return f"{len(bare)} of {len(lines(text))} lines are lists of words (first: {bare[0]!r})"
    return ""


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _count(unit: str, measure: Callable[[str], list[str]], op: str) -> Callable[[str, dict[str, Any]], str]:
    """A check of a count against `n`: exact ("=="), at least (">=") or at most ("<=")."""

    def check(text: str, c: dict[str, Any]) -> str:
        got, n = len(measure(text)), int(c["n"])
        ok = got == n if op == "==" else got >= n if op == ">=" else got <= n
        return "" if ok else f"has {_plural(got, unit)}"

    return check


def _include(text: str, c: dict[str, Any]) -> str:
    missing = [w for w in c["words"] if not _has_phrase(text, w)]
    return f"missing {', '.join(repr(w) for w in missing)}" if missing else ""


def _exclude(text: str, c: dict[str, Any]) -> str:
    used = [w for w in c["words"] if _has_phrase(text, w)]
    return f"uses {', '.join(repr(w) for w in used)}" if used else ""


def _acrostic(text: str, c: dict[str, Any]) -> str:
    firsts = "".join(next((ch for ch in line if ch.isalpha()), "?") for line in lines(text))
    ok = firsts.casefold() == str(c["word"]).casefold()
    return "" if ok else f"the first letters of the lines spell {firsts.upper()!r}"


def _edge(which: str) -> Callable[[str, dict[str, Any]], str]:
    def check(text: str, c: dict[str, Any]) -> str:
        want = [w.casefold() for w in words(c["text"])]
        have = words(text)
        got = have[: len(want)] if which == "start" else have[len(have) - len(want) :]
        return "" if [w.casefold() for w in got] == want else f"it {which}s with {' '.join(got)!r}"

    return check


def _words_of(text: str) -> str:
    return f"the word{'s' if len(words(text)) > 1 else ''} {text!r}"


def _no_letter(text: str, c: dict[str, Any]) -> str:
    letter = str(c["letter"]).casefold()
    hit = next((w for w in words(text) if letter in w.casefold()), None)
    if hit is None and letter in text.casefold():
        hit = letter
    return "" if hit is None else f"uses {letter!r} (in {hit!r})"


# kind -> (fields it needs, check returning "" or what is wrong, description for prompts)
_KINDS: dict[
    str, tuple[tuple[str, ...], Callable[[str, dict[str, Any]], str], Callable[[dict[str, Any]], str]]
] = {
    "min_words": (("n",), _count("word", words, ">="), lambda c: f"at least {c['n']} words"),
    "max_words": (("n",), _count("word", words, "<="), lambda c: f"at most {c['n']} words"),
    "words": (("n",), _count("word", words, "=="), lambda c: f"exactly {c['n']} words"),
    "lines": (("n",), _count("line", lines, "=="), lambda c: f"exactly {c['n']} non-empty lines"),
    "min_lines": (("n",), _count("line", lines, ">="), lambda c: f"at least {c['n']} non-empty lines"),
    "max_lines": (("n",), _count("line", lines, "<="), lambda c: f"at most {c['n']} non-empty lines"),
    "sentences": (("n",), _count("sentence", sentences, "=="), lambda c: f"exactly {c['n']} sentences"),
    "min_sentences": (("n",), _count("sentence", sentences, ">="), lambda c: f"at least {c['n']} sentences"),
    "max_sentences": (("n",), _count("sentence", sentences, "<="), lambda c: f"at most {c['n']} sentences"),
    "include": (
        ("words",),
        _include,
        lambda c: "use each of these words exactly as written: " + ", ".join(repr(w) for w in c["words"]),
    ),
    "exclude": (
        ("words",),
        _exclude,
        lambda c: "never use these words: " + ", ".join(repr(w) for w in c["words"]),
    ),
    "acrostic": (
        ("word",),
        _acrostic,
        lambda c: f"the first letters of the lines spell {str(c['word']).upper()!r} (one line per letter)",
    ),
    "starts_with": (("text",), _edge("start"), lambda c: f"start with {_words_of(c['text'])}"),
    "ends_with": (("text",), _edge("end"), lambda c: f"end with {_words_of(c['text'])}"),
    "no_letter": (
        ("letter",),
        _no_letter,
        lambda c: f"never use the letter {str(c['letter']).lower()!r} (upper or lower case)",
    ),
    "topic": (
        ("words",),
        _topic,
        lambda c: "stay on the topic: name at least one of " + ", ".join(repr(w) for w in c["words"]),
    ),
    "prose": ((), _prose, lambda c: "write the piece itself in phrases and sentences, not a list of words"),
}
KINDS = tuple(_KINDS)


def _checked(c: Any, i: int) -> tuple[Callable[[str, dict[str, Any]], str], Callable[[dict[str, Any]], str]]:
    if not isinstance(c, dict) or c.get("kind") not in _KINDS:
        kind = c.get("kind") if isinstance(c, dict) else c
        raise ValueError(f"constraints grader: constraint {i} has kind {kind!r} (known: {', '.join(KINDS)})")
    fields, check, text = _KINDS[c["kind"]]
    missing = [f for f in fields if f not in c]
    if missing:
        raise ValueError(f"constraints grader: constraint {i} ({c['kind']}) needs {', '.join(missing)}")
    return check, text


def describe(constraint: dict[str, Any]) -> str:
    """The constraint in words, for a prompt ("at most 60 words")."""
    return _checked(constraint, 0)[1](constraint)


class ConstraintsSpec(GraderSpec):
    constraints: Any = None  # a list of {"kind", ...fields}: checked one by one below, each error numbered


def grade_constraints(answer: str, reference: str, spec: ConstraintsSpec) -> Grade:
    constraints = spec.constraints
    if not isinstance(constraints, list) or not constraints:
        raise ValueError("constraints grader: the spec needs a non-empty 'constraints' list")
    checks = [_checked(c, i) for i, c in enumerate(constraints, start=1)]  # a bad spec fails before grading
    if not answer.strip():
        return Grade(False, "empty answer")
    for i, (c, (check, text)) in enumerate(zip(constraints, checks, strict=True), start=1):
        wrong = check(answer, c)
        if wrong:
            return Grade(False, f"constraint {i} ({c['kind']}: {text(c)}) broken: {wrong}")
    return Grade(True, "")


CONSTRAINTS = Grader("constraints", ConstraintsSpec, grade_constraints)
