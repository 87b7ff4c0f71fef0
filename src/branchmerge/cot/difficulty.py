"""difficulty: label every trace easy / medium / hard by its problem's difficulty (DistilQwen's grading step).

Two ways, chosen by `DifficultyOptions.method`:
- judge: an LLM reads the problem (and its reference answer) and answers `<difficulty>LEVEL</difficulty>`
  (prompt `prompts/difficulty.vN.txt`). One request per problem, shared by all its traces.
- student: the student itself answers each problem k times; its pass rate under the problem's grader sets the
  level (>= easy_at easy, <= hard_at hard, else medium). This asks what is hard for *this* student rather than
  for a reader, and needs no judge.

Problems whose label could not be had (a judge answer that does not parse, a failed request) keep their traces
with `difficulty=None`, counted as flagged; each verdict, parsed or not, goes to `STEM.verdicts.jsonl`.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import Field, model_validator

from branchmerge.cot.base import LEVELS, Processor, StepContext, StepOptions, StepResult, by_problem
from branchmerge.errors import BranchmergeError
from branchmerge.graders import grade_many
from branchmerge.judge.calls import ask, load_template, parse_label, verdict
from branchmerge.records import Problem, Trace, Verdict, read_jsonl, write_jsonl


class DifficultyOptions(StepOptions):
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


def judge_levels(problems: list[Problem], ctx: StepContext, o: DifficultyOptions) -> list[Verdict]:
    """One verdict per problem from the judge."""
    if ctx.judge is None:
        raise BranchmergeError("difficulty (method judge) needs a judge endpoint")
    template = load_template("difficulty")
    ids = {f"{template.tag}:{p.id}": p for p in problems}
    prompts = {rid: template.render(question=p.question, reference=p.reference) for rid, p in ids.items()}
    answers = ask(prompts, ctx.judge, ctx.cache, ctx.judging, ctx.show_progress)
    return [
        verdict(
            "difficulty", template, p.id, answers.get(rid), lambda a: parse_label(a, "difficulty", LEVELS)
        )
        for rid, p in ids.items()
    ]


def level_from_pass_rate(passed: int, k: int, easy_at: float, hard_at: float) -> str:
    rate = passed / k
    return "easy" if rate >= easy_at else "hard" if rate <= hard_at else "medium"


def student_levels(problems: list[Problem], ctx: StepContext, o: DifficultyOptions) -> list[Verdict]:
    """One verdict per problem from k student answers graded against the reference (cached in
    STEM.student.jsonl, so a rerun samples nothing again). Failed requests do not count as wrong answers: a
    problem with any failed sample gets no level."""
    from branchmerge.teachers.client import generate_traces

    if ctx.student is None:
        raise BranchmergeError("difficulty (method student) needs the student's endpoint")
    cache = ctx.side("student.jsonl")
    generate_traces(
        problems,
        ctx.student,
        cache,
        n=o.k,
        temperatures=(o.temperature,),
        top_p=ctx.judging.top_p,
        max_tokens=o.max_tokens,
        seed=ctx.judging.seed,
        retry_errors=cache.exists(),
        show_progress=ctx.show_progress,
    )
    answers = by_problem([t for t in read_jsonl(cache, Trace) if t.teacher == ctx.student.name])
    base = {"step": "difficulty", "template": f"student-pass-rate.k{o.k}", "judge": ctx.student.name}
    out: dict[str, Verdict] = {}
    complete: dict[str, list[Trace]] = {}
    for p in problems:
        samples = answers.get(p.id, [])[: o.k]
        failed = [s for s in samples if s.error]
        if len(samples) < o.k or failed:
            why = failed[0].error if failed else f"{len(samples)} of {o.k} samples"
            out[p.id] = Verdict(**base, target=p.id, error=f"student samples incomplete: {why}")
        else:
            complete[p.id] = samples
    ids = [pid for pid, ss in complete.items() for _ in ss]
    items = [(s.answer, p.reference, p.grader) for p in problems if p.id in complete for s in complete[p.id]]
    passed: Counter[str] = Counter()
    for pid, g in zip(ids, grade_many(items, errors="record"), strict=True):
        passed[pid] += g.passed
    for pid in complete:
        level = level_from_pass_rate(passed[pid], o.k, o.easy_at, o.hard_at)
        out[pid] = Verdict(**base, target=pid, value=level, raw=f"{passed[pid]}/{o.k} passed")
    return [out[p.id] for p in problems]


def run(
    traces: list[Trace], problems: dict[str, Problem], options: DifficultyOptions, ctx: StepContext
) -> StepResult:
    asked = [problems[pid] for pid in by_problem(traces)]
    find = judge_levels if options.method == "judge" else student_levels
    verdicts = find(asked, ctx, options)
    write_jsonl(ctx.side("verdicts.jsonl"), verdicts)
    level = {v.target: v.value for v in verdicts}
    result = StepResult(kept=[t.model_copy(update={"difficulty": level[t.problem_id]}) for t in traces])
    unlabelled = sum(t.difficulty is None for t in result.kept)
    if unlabelled:
        result.flagged[f"no difficulty (why: {ctx.side('verdicts.jsonl').name})"] = unlabelled
    result.note = ", ".join(f"{lvl} {sum(t.difficulty == lvl for t in result.kept)}" for lvl in LEVELS)
    return result


def _asks_the_judge(options: DifficultyOptions) -> bool:
    return options.method == "judge"


PROCESSOR = Processor("difficulty", DifficultyOptions, run, needs_reference=True, needs_judge=_asks_the_judge)
