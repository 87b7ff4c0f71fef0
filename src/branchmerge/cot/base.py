"""The processor contract: traces in, traces out, with the reasons for every trace removed or flagged.

A processor is a `Processor`: a name, an options model (defined in the processor's own module), and
`run(traces, problems, options, context) -> StepResult`, where `options` is its own section of ProcessOptions and
`context` says where side files go, which endpoints judge and how the judge samples. Processors never read
another processor's internals; they meet only through Trace fields (`verified`, `difficulty`, `rv`, `cd`,
`rewritten_from`). `registry.py` lists them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from branchmerge.judge.calls import JudgeSettings
from branchmerge.records import Problem, Trace
from branchmerge.teachers.config import TeacherConfig

LEVELS = ("easy", "medium", "hard")


class StepOptions(BaseModel):
    """Base of every processor's options: a key the processor does not read is an error."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class StepContext:
    """Where a step writes its side files (`out_dir/stem.*`) and who judges."""

    out_dir: Path
    stem: str
    judge: TeacherConfig | None = None
    student: TeacherConfig | None = None  # for difficulty by the student's pass rate
    judge_cache: Path | None = None  # judge answers; default out_dir/stem.judge.jsonl
    show_progress: bool = True
    judging: JudgeSettings = field(default_factory=JudgeSettings)  # how the judge samples

    def side(self, suffix: str) -> Path:
        return self.out_dir / f"{self.stem}.{suffix}"

    @property
    def cache(self) -> Path:
        return self.judge_cache or self.side("judge.jsonl")


@dataclass
class StepResult:
    kept: list[Trace]
    removed: Counter[str] = field(default_factory=Counter)  # reason -> traces removed
    flagged: Counter[str] = field(default_factory=Counter)  # reason -> traces kept but marked (no score...)
    note: str = ""
    table: list[dict[str, Any]] = field(default_factory=list)  # detail rows for the counts file


def never(options: Any) -> bool:
    return False


def always(options: Any) -> bool:
    return True


@dataclass(frozen=True)
class Processor:
    """One processor: its name in chains and presets, its options model (its section of `ProcessOptions`; None
    when it has no settings), `run(traces, problems, its options, context)`, whether it grades answers against
    the problems' references, and whether, with the given options, it calls the judge endpoint."""

    name: str
    options: type[StepOptions] | None
    run: Callable[[list[Trace], dict[str, Problem], Any, StepContext], StepResult]
    needs_reference: bool = False
    needs_judge: Callable[[Any], bool] = never


def by_problem(traces: list[Trace]) -> dict[str, list[Trace]]:
    out: dict[str, list[Trace]] = {}
    for t in traces:
        out.setdefault(t.problem_id, []).append(t)
    return out


__all__ = ["LEVELS", "Processor", "StepContext", "StepOptions", "StepResult", "always", "by_problem", "never"]
