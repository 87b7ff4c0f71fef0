"""The explicit registry of standard sets (no import side effects), and lookup by forgiving name."""

from __future__ import annotations

from branchmerge.evaluate.sets.base import StandardSet
from branchmerge.evaluate.sets.code_sets import HUMANEVAL, LIVECODEBENCH
from branchmerge.evaluate.sets.gpqa import GPQA_DIAMOND
from branchmerge.evaluate.sets.math_sets import AIME, AIME2024, AIME2025, GSM8K, MATH500
from branchmerge.evaluate.sets.ten_domain import TEN_DOMAIN

SETS: dict[str, StandardSet] = {
    s.name: s
    for s in (MATH500, AIME, AIME2024, AIME2025, GPQA_DIAMOND, GSM8K, HUMANEVAL, LIVECODEBENCH, TEN_DOMAIN)
}
ALIASES = {"math": "math500", "gpqa": "gpqa-diamond", "lcb": "livecodebench", "aime24": "aime2024"}
ALIASES |= {"aime25": "aime2025", "mdr10": "ten-domain"}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def find_set(name: str) -> StandardSet | None:
    """The set called `name`, ignoring case, '-', '_' and spaces ("GPQA_Diamond", "MATH-500"); None if unknown."""
    by_key = {_key(n): s for n, s in SETS.items()} | {_key(a): SETS[n] for a, n in ALIASES.items()}
    return by_key.get(_key(name))
