"""The grader contract: (answer, reference, spec) -> Grade."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Grade:
    passed: bool
    detail: str = ""
    error: str | None = None  # set (and passed False) when the grader could not grade, e.g. a bad reference


class Grader(Protocol):
    def __call__(self, answer: str, reference: str, spec: dict[str, Any]) -> Grade: ...


def needs_reference(spec: dict[str, Any]) -> bool:
    """Whether the grader compares with the problem's `reference`: code is judged by the spec's tests, SQL by
    `expected` rows when given, regex by the spec's `pattern` when given."""
    kind = spec.get("type", "exact")
    if kind == "code":
        return False
    if kind == "sql":
        return "expected" not in spec
    if kind == "regex":
        return "pattern" not in spec
    return True


def grade(answer: str, reference: str, spec: dict[str, Any]) -> Grade:
    """Grade `answer` with the grader named by `spec["type"]`."""
    from branchmerge.graders.registry import GRADERS

    kind = spec.get("type", "exact")
    if kind not in GRADERS:
        raise KeyError(f"grader type '{kind}' is not known (known: {', '.join(sorted(GRADERS))})")
    return GRADERS[kind](answer, reference, spec)
