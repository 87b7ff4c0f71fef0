"""sample: choose which traces train the student (DistilQwen's target-aware and task-aware sampling).

Three filters, applied in this order, each optional:
  1. target-aware: keep traces whose RV and CD scores (0-9, from `rv_cd`) fall in the ranges chosen for the
     student's size; a trace without the score a range needs is dropped and counted as "unscored", never
     given a default score;
  2. per problem: keep all traces, or only the shortest verified one of each problem (completion tokens,
     else reasoning characters; ties by teacher and sample);
  3. task-aware: per-domain caps, or weighted shares of a total, drawn with a seed (the same rule as
     `collect`'s resampling).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Literal

from pydantic import Field

from branchmerge.collect import draw, targets
from branchmerge.cot.base import Processor, StepContext, StepOptions, StepResult
from branchmerge.cot.text import trace_length
from branchmerge.records import Problem, Trace


class SampleSpec(StepOptions):
    """RV/CD bands, per-problem choice, per-domain caps or weighted shares."""

    rv: tuple[int, int] | None = None  # keep L <= rv <= H
    cd: tuple[int, int] | None = None
    per_problem: Literal["all", "shortest"] = "all"
    caps: dict[str, int] = Field(default_factory=dict)
    weights: dict[str, float] = Field(default_factory=dict)
    total: int | None = Field(None, gt=0)
    seed: int = 0


def sample_traces(
    traces: list[Trace], problems: dict[str, Problem], spec: SampleSpec
) -> tuple[list[Trace], Counter[str]]:
    """(kept traces in their original order, removed per reason)."""
    removed: Counter[str] = Counter()
    kept = traces
    for name, band in (("rv", spec.rv), ("cd", spec.cd)):
        if band is None:
            continue
        low, high = band
        survivors = []
        for t in kept:
            score = getattr(t, name)
            if score is None:
                removed[f"no {name} score"] += 1
            elif not low <= score <= high:
                removed[f"{name} outside {low}-{high}"] += 1
            else:
                survivors.append(t)
        kept = survivors
    if spec.per_problem == "shortest":
        best: dict[str, Trace] = {}
        for t in kept:
            if t.verified is False:
                continue
            current = best.get(t.problem_id)
            if current is None or (trace_length(t), t.teacher, t.sample) < (
                trace_length(current),
                current.teacher,
                current.sample,
            ):
                best[t.problem_id] = t
        chosen = {id(t) for t in best.values()}
        removed["not the shortest of its problem"] += sum(id(t) not in chosen for t in kept)
        kept = [t for t in kept if id(t) in chosen]
    if spec.caps or spec.weights:
        by_domain: dict[str, list[Trace]] = {}
        for t in kept:
            by_domain.setdefault(problems[t.problem_id].domain, []).append(t)
        want = targets(
            Counter({d: len(ts) for d, ts in by_domain.items()}), spec.caps, spec.weights, spec.total
        )
        rng = random.Random(spec.seed)
        picked = {id(t) for d in sorted(by_domain) for t in draw(by_domain[d], want[d], rng)}
        removed["over its domain's share"] += len(kept) - len(picked)
        kept = [t for t in kept if id(t) in picked]
    return kept, +removed


def run(
    traces: list[Trace], problems: dict[str, Problem], options: SampleSpec, ctx: StepContext
) -> StepResult:
    kept, removed = sample_traces(traces, problems, options)
    return StepResult(kept=kept, removed=removed)


PROCESSOR = Processor("sample", SampleSpec, run)
