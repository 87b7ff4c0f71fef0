"""The processor contract: traces in, traces out, with the reasons for every trace removed or flagged.

A processor is `run(traces, problems, options, context) -> StepResult`. `options` is the whole ProcessOptions
(each step reads its own section), `context` says where side files go and which endpoints judge. Processors
never read another processor's internals; they meet only through Trace fields (`verified`, `difficulty`, `rv`,
`cd`, `rewritten_from`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from branchmerge.cot.judge import JudgeSettings
from branchmerge.records import Problem, Trace
from branchmerge.teachers.config import TeacherConfig

LEVELS = ("easy", "medium", "hard")


class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SampleSpec(_Opts):
    """sample: RV/CD bands, per-problem choice, per-domain caps or weighted shares (see cot/sample.py)."""

    rv: tuple[int, int] | None = None  # keep L <= rv <= H
    cd: tuple[int, int] | None = None
    per_problem: Literal["all", "shortest"] = "all"
    caps: dict[str, int] = Field(default_factory=dict)
    weights: dict[str, float] = Field(default_factory=dict)
    total: int | None = Field(None, gt=0)
    seed: int = 0


class VerifyOptions(_Opts):
    # drop: keep verified traces; keep-flagged: keep all, marked; best-of-n: the shortest verified trace of each
    # (problem, teacher), so n samples per teacher give at most one trace each.
    policy: Literal["drop", "keep-flagged", "best-of-n"] = "drop"


class DedupOptions(_Opts):
    threshold: float = Field(0.8, gt=0, le=0.98)


class DecontaminateOptions(_Opts):
    benchmarks: list[Path] = []  # Problems JSONL files
    ngram: int = Field(13, gt=0)


class DifficultyOptions(_Opts):
    # judge: an LLM rates each problem easy/medium/hard. student: the student answers each problem k times;
    # a pass rate >= easy_at is easy, <= hard_at is hard, anything between medium.
    method: Literal["judge", "student"] = "judge"
    k: int = Field(8, gt=0)
    temperature: float = Field(0.6, ge=0)
    max_tokens: int = Field(4096, gt=0)
    easy_at: float = Field(0.8, ge=0, le=1)
    hard_at: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> DifficultyOptions:
        if self.hard_at >= self.easy_at:
            raise ValueError(f"hard_at {self.hard_at} must be below easy_at {self.easy_at}")
        return self


class RewriteOptions(_Opts):
    levels: list[Literal["easy", "medium", "hard"]] = ["easy", "hard"]  # DistilQwen rewrites easy and hard
    keep_original: bool = False  # False: a verified rewrite replaces its original


class ProcessOptions(_Opts):
    """Every step's settings; a recipe's `process:` section and the CLI's options both fill this."""

    verify: VerifyOptions = VerifyOptions()
    dedup: DedupOptions = DedupOptions()
    decontaminate: DecontaminateOptions = DecontaminateOptions()
    difficulty: DifficultyOptions = DifficultyOptions()
    rewrite: RewriteOptions = RewriteOptions()
    sample: SampleSpec = SampleSpec()
    judging: JudgeSettings = JudgeSettings()  # sampling of judge calls (the judge itself is an endpoint)


@dataclass
class StepContext:
    """Where a step writes its side files (`out_dir/stem.*`) and who judges."""

    out_dir: Path
    stem: str
    judge: TeacherConfig | None = None
    student: TeacherConfig | None = None  # for difficulty by the student's pass rate
    judge_cache: Path | None = None  # judge answers; default out_dir/stem.judge.jsonl
    show_progress: bool = True

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


def by_problem(traces: list[Trace]) -> dict[str, list[Trace]]:
    out: dict[str, list[Trace]] = {}
    for t in traces:
        out.setdefault(t.problem_id, []).append(t)
    return out


__all__ = ["LEVELS", "Problem", "ProcessOptions", "StepContext", "StepResult", "by_problem"]
