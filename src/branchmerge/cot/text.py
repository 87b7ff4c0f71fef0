"""Text keys shared by the steps that compare questions: `collect` and `dedup` (exact duplicates) and
`dedup` and `decontaminate` (word n-grams)."""

from __future__ import annotations

import re


def normalize(text: str) -> str:
    """Trimmed, whitespace collapsed, case-folded: two questions with equal keys are exact duplicates."""
    return re.sub(r"\s+", " ", text.strip()).casefold()


def words(text: str) -> list[str]:
    """The case-folded word characters runs of `text`, punctuation dropped."""
    return re.findall(r"\w+", text.casefold())
