"""Text keys shared by the steps that compare questions: `collect` and `dedup` (exact duplicates) and
`dedup` and `decontaminate` (word n-grams); and the trace length `verify` and `sample` pick the shortest by."""

from __future__ import annotations

import re

from branchmerge.records import Trace


def normalize(text: str) -> str:
    """Trimmed, whitespace collapsed, case-folded: two questions with equal keys are exact duplicates."""
    return re.sub(r"\s+", " ", text.strip()).casefold()


def words(text: str) -> list[str]:
    """The case-folded word characters runs of `text`, punctuation dropped."""
    return re.findall(r"\w+", text.casefold())


def trace_length(t: Trace) -> int:
    """Completion tokens, or characters of reasoning and answer when the server gave no token counts."""
    return t.completion_tokens or len(t.reasoning) + len(t.answer)
