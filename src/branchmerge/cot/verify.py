"""verify: grade each trace's answer against its problem's reference; keep the correct ones, count the rest."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from branchmerge.graders import grade
from branchmerge.records import Problem, Trace


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
                    "accuracy": round(c["kept"] / total, 4) if total else 0.0,
                }
            )
        return out


def verify_traces(traces: list[Trace], problems: dict[str, Problem]) -> tuple[list[Trace], VerifyReport]:
    """Mark every trace `verified`; return the verified ones and the per teacher × domain table.

    A trace whose request failed, or whose completion was cut before `</think>` (no answer), counts as dropped
    under its own reason rather than as a wrong answer.
    """
    report = VerifyReport()
    kept: list[Trace] = []
    for t in traces:
        problem = problems.get(t.problem_id)
        if problem is None:
            raise KeyError(f"trace for unknown problem id '{t.problem_id}'")
        counts = report.table.setdefault((t.teacher, problem.domain), Counter())
        if t.error:
            reason = "error"
        elif t.finish_reason == "length" and not t.answer:
            reason = "truncated"
        else:
            reason = "kept" if grade(t.answer, problem.reference, problem.grader).passed else "wrong"
        counts[reason] += 1
        verified = t.model_copy(update={"verified": reason == "kept"})
        if reason == "kept":
            kept.append(verified)
            report.kept += 1
        else:
            report.dropped += 1
    return kept, report
