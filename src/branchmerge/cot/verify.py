"""verify: grade each trace's answer against its problem's reference; keep the correct ones, count the rest.

Policies (`VerifyOptions.policy`): drop (keep verified traces), keep-flagged (keep every trace, `verified`
set), best-of-n (the shortest verified trace of each (problem, teacher): of n samples a teacher wrote, one).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from branchmerge.cot.base import Processor, StepContext, StepOptions, StepResult
from branchmerge.cot.text import trace_length
from branchmerge.errors import BranchmergeError
from branchmerge.graders import GRADERS, grade_many, needs_reference, unknown_graders
from branchmerge.records import Problem, Trace


class VerifyOptions(StepOptions):
    # drop: keep verified traces; keep-flagged: keep all, marked; best-of-n: the shortest verified trace of each
    # (problem, teacher), so n samples per teacher give at most one trace each.
    policy: Literal["drop", "keep-flagged", "best-of-n"] = "drop"


@dataclass
class VerifyReport:
    kept: int = 0
    dropped: int = 0
    # (teacher, domain) -> counts of kept / wrong / error / truncated
    table: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, object]]:
        out = []
        for (teacher, domain), c in sorted(self.table.items()):
            total = sum(c.values())
            out.append(
                {
                    "teacher": teacher,
                    "domain": domain,
                    "traces": total,
                    "kept": c["kept"],
                    "wrong": c["wrong"],
                    "truncated": c["truncated"],
                    "error": c["error"],
                    "empty": c["empty"],
                    "no reference": c["no reference"],
                    "grader error": c["grader error"],
                    "accuracy": round(c["kept"] / total, 4) if total else 0.0,
                }
            )
        return out


def check_graders(problems: Iterable[Problem]) -> None:
    """An unknown grader type is a mistake in the problems file: one error before any grading."""
    listed = list(problems)
    unknown = unknown_graders(p.grader for p in listed)
    if unknown:
        i, kind = unknown[0]
        raise BranchmergeError(
            f"problem '{listed[i].id}': grader type '{kind}' is not known "
            f"(known: {', '.join(sorted(GRADERS))})"
        )


def _unverifiable(t: Trace, problem: Problem) -> str | None:
    """Why `t` cannot be graded at all, or None."""
    if t.error:
        return "error"
    if t.finish_reason == "length" and not t.answer:
        return "truncated"
    if not t.answer.strip():
        return "empty"
    if not problem.reference.strip() and needs_reference(problem.grader):
        return "no reference"
    return None


def verify_traces(
    traces: list[Trace], problems: dict[str, Problem], keep_all: bool = False
) -> tuple[list[Trace], VerifyReport]:
    """Mark every trace `verified`; return the verified ones (all, marked, with `keep_all`) and the per
    teacher × domain table.

    A trace whose request failed, whose completion was cut before `</think>` (no answer), that has no answer,
    whose problem has no reference, or whose reference its grader cannot read counts as dropped under that
    reason rather than as a wrong answer; none of them stops the run.
    """
    unknown = sorted({t.problem_id for t in traces} - set(problems))
    if unknown:
        raise KeyError(f"trace for unknown problem id '{unknown[0]}'")
    check_graders(problems[t.problem_id] for t in traces)
    report = VerifyReport()
    kept: list[Trace] = []
    reasons = [_unverifiable(t, problems[t.problem_id]) for t in traces]
    todo = [i for i, r in enumerate(reasons) if r is None]
    items = [
        (traces[i].answer, problems[traces[i].problem_id].reference, problems[traces[i].problem_id].grader)
        for i in todo
    ]
    for i, g in zip(todo, grade_many(items, errors="record"), strict=True):
        reasons[i] = "grader error" if g.error else "kept" if g.passed else "wrong"
    for t, reason in zip(traces, reasons, strict=True):
        report.table.setdefault((t.teacher, problems[t.problem_id].domain), Counter())[reason or "error"] += 1
        verified = t.model_copy(update={"verified": reason == "kept"})
        if reason == "kept" or keep_all:
            kept.append(verified)
        if reason == "kept":
            report.kept += 1
        else:
            report.dropped += 1
    return kept, report


def best_of_n(traces: list[Trace]) -> list[Trace]:
    """The shortest verified trace of each (problem, teacher), ties by sample; original order kept."""
    best: dict[tuple[str, str], Trace] = {}
    for t in traces:
        if not t.verified:
            continue
        cur = best.get((t.problem_id, t.teacher))
        if cur is None or (trace_length(t), t.sample) < (trace_length(cur), cur.sample):
            best[(t.problem_id, t.teacher)] = t
    chosen = {id(t) for t in best.values()}
    return [t for t in traces if id(t) in chosen]


def run(
    traces: list[Trace], problems: dict[str, Problem], options: VerifyOptions, ctx: StepContext
) -> StepResult:
    policy = options.policy
    with contextlib.ExitStack() as stack:
        if (
            ctx.judge is not None
        ):  # judge-graded problems (mdr scenario / ethics) are graded by the step's judge
            from branchmerge.judge import judging

            stack.enter_context(judging(ctx.judge, ctx.cache, ctx.judging))
        marked, report = verify_traces(traces, problems, keep_all=True)
    result = StepResult(kept=marked, note=f"policy {policy}", table=report.rows())
    reasons = Counter[str]()
    for c in report.table.values():
        reasons.update({k: v for k, v in c.items() if k != "kept"})
    if policy == "keep-flagged":
        result.flagged.update({f"{r} (kept, verified=false)": n for r, n in reasons.items()})
        return result
    result.kept = [t for t in marked if t.verified]
    result.removed.update(reasons)
    if policy == "best-of-n":
        best = best_of_n(result.kept)
        result.removed["not the best of its teacher's samples"] = len(result.kept) - len(best)
        result.kept = best
    return result


# judge-graded problems (mdr scenario / ethics) use the process judge when one is given; verify runs without one
PROCESSOR = Processor("verify", VerifyOptions, run, needs_reference=True)
