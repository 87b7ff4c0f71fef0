"""The grader contract: (answer, reference, spec) -> Grade."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Grade:
    passed: bool
    detail: str = ""


class Grader(Protocol):
    def __call__(self, answer: str, reference: str, spec: dict[str, Any]) -> Grade: ...


def grade(answer: str, reference: str, spec: dict[str, Any]) -> Grade:
    """Grade `answer` with the grader named by `spec["type"]`."""
    from branchmerge.graders.registry import GRADERS

    kind = spec.get("type", "exact")
    if kind not in GRADERS:
        raise KeyError(f"grader type '{kind}' is not known (known: {', '.join(sorted(GRADERS))})")
    return GRADERS[kind](answer, reference, spec)
