"""The before/after count table every processor step prints and writes next to its output."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from branchmerge.records import Problem, Trace, atomic_write_text


class StepCounts(BaseModel):
    """Traces per domain before and after one step, why the others went, and what was marked."""

    step: str
    before: dict[str, int]
    after: dict[str, int]
    removed: dict[str, int]  # reason -> traces
    flagged: dict[str, int] = {}  # reason -> traces kept but marked (no score, rewritten...)
    note: str = ""
    table: list[dict[str, Any]] = []  # the step's own detail rows (verify: accuracy per teacher and domain)

    def rows(self) -> list[tuple[str, int, int]]:
        domains = sorted(set(self.before) | set(self.after))
        return [(d, self.before.get(d, 0), self.after.get(d, 0)) for d in domains]

    def write(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.model_dump(), indent=2) + "\n")


def count_step(
    step: str, before: list[Trace], after: list[Trace], problems: dict[str, Problem], removed: Counter[str]
) -> StepCounts:
    def per_domain(traces: list[Trace]) -> dict[str, int]:
        return dict(sorted(Counter(problems[t.problem_id].domain for t in traces).items()))

    return StepCounts(step=step, before=per_domain(before), after=per_domain(after), removed=dict(removed))
