"""The recipe's stages. Each reads files, writes into its own work folder and returns a summary dict."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from branchmerge.cot.base import ProcessOptions, StepContext
from branchmerge.cot.registry import process_traces, resolve_steps
from branchmerge.evaluate.runner import evaluate_model
from branchmerge.evaluate.stats import accuracy_table
from branchmerge.recipe.schema import (
    BuildSFTSpec,
    EvalSpec,
    GenerateSpec,
    ProblemsSpec,
    ProcessSpec,
    TeacherSpec,
)
from branchmerge.records import Problem, SFTExample, Trace, read_jsonl, write_jsonl
from branchmerge.teachers.config import TeacherConfig
from branchmerge.teachers.serve import running_server
from branchmerge.train.branches import BranchPlan, train_branch
from branchmerge.train.curriculum import CurriculumResult
from branchmerge.train.sft_data import build_sft_examples


def problems_stage(spec: ProblemsSpec, work: Path) -> dict[str, Any]:
    """Held-out eval items first, then training items that exclude every eval question."""
    from branchmerge.tinylab.domains import generate_problems

    levels = tuple(spec.levels)
    evals, trains = [], []
    for d in spec.domains:
        ev = generate_problems(d, spec.eval_per_domain, spec.eval_seed, levels)
        evals += ev
        trains += generate_problems(
            d, spec.train_per_domain, spec.train_seed, levels, {p.question for p in ev}
        )
    write_jsonl(work / "train.jsonl", trains)
    write_jsonl(work / "eval.jsonl", evals)
    return {"train": len(trains), "eval": len(evals), "domains": spec.domains}


@contextlib.contextmanager
def teacher_endpoint(teacher: TeacherSpec, checkpoint: Path | None) -> Iterator[TeacherConfig]:
    """The teacher as a client config; a local checkpoint is served on 127.0.0.1 while the block runs."""
    passed = teacher.model_dump(exclude={"name", "checkpoint", "base_url", "model"})
    if checkpoint is not None:
        with running_server(checkpoint) as url:
            yield TeacherConfig(
                name=teacher.name, base_url=url, model=teacher.model or checkpoint.name, **passed
            )
    else:
        assert teacher.base_url is not None and teacher.model is not None
        yield TeacherConfig(name=teacher.name, base_url=teacher.base_url, model=teacher.model, **passed)


def generate_stage(
    problems: list[Problem],
    teacher: TeacherSpec,
    spec: GenerateSpec,
    checkpoint: Path | None,
    work: Path,
    show_progress: bool,
) -> dict[str, Any]:
    """Send every problem to the teacher over HTTP; a local checkpoint is served on 127.0.0.1 first."""
    from branchmerge.teachers.client import generate_traces

    with teacher_endpoint(teacher, checkpoint) as cfg:
        summary = generate_traces(
            problems,
            cfg,
            work / "traces.jsonl",
            n=spec.n,
            temperatures=tuple(spec.temperatures),
            top_p=spec.top_p,
            max_tokens=spec.max_tokens,
            seed=spec.seed,
            show_progress=show_progress,
        )
    traces = read_jsonl(work / "traces.jsonl", Trace)
    return {
        "teacher": teacher.name,
        "traces": len(traces),
        "errors": sum(t.error is not None for t in traces),
        "truncated": sum(t.finish_reason == "length" for t in traces),
        "requests_this_run": summary.requests,
    }


def process_stage(
    problems: list[Problem],
    trace_files: list[Path],
    spec: ProcessSpec,
    judge: tuple[TeacherSpec, Path | None] | None,
    student: Path,
    work: Path,
    show_progress: bool,
) -> dict[str, Any]:
    """The CoT processors over all teachers' traces; the judge (a recipe teacher) and, for difficulty by pass
    rate, the student are served while the steps run. Writes processed.jsonl and each step's counts."""
    traces = [t for f in trace_files for t in read_jsonl(f, Trace)]
    steps = resolve_steps(spec.steps)
    options = ProcessOptions.model_validate(spec.model_dump(exclude={"steps", "judge"}))
    by_student = "difficulty" in steps and options.difficulty.method == "student"
    with contextlib.ExitStack() as stack:
        judge_cfg = stack.enter_context(teacher_endpoint(*judge)) if judge is not None else None
        student_cfg = None
        if by_student:
            url = stack.enter_context(running_server(student))
            student_cfg = TeacherConfig(name="student", base_url=url, model=student.name, max_concurrency=32)
        ctx = StepContext(work, "processed", judge_cfg, student_cfg, show_progress=show_progress)
        counts = process_traces(
            steps, traces, {p.id: p for p in problems}, options, work / "processed.jsonl", ctx
        )
    return {
        "traces": len(traces),
        "kept": sum(counts[-1].after.values()),
        "steps": {
            c.step: {"after": sum(c.after.values()), "removed": c.removed, "marked": c.flagged}
            for c in counts
        },
        "table": next((c.table for c in counts if c.step == "verify"), []),
    }


def build_sft_stage(
    problems: list[Problem], verified: Path, student: Path, spec: BuildSFTSpec, work: Path
) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student)
    examples, report = build_sft_examples(
        read_jsonl(verified, Trace), {p.id: p for p in problems}, tokenizer, max_length=spec.max_length
    )
    write_jsonl(work / "sft.jsonl", examples)
    per_domain: dict[str, int] = {}
    for e in examples:
        per_domain[e.domain] = per_domain.get(e.domain, 0) + 1
    return {
        "examples": report.examples,
        "too_long": report.too_long,
        "tokens": report.tokens,
        "per_domain": per_domain,
    }


def train_stage(
    sft_file: Path, student: Path, plan: BranchPlan, work: Path, show_progress: bool
) -> dict[str, Any]:
    """Train one branch (an expert or the mixture, with or without a curriculum) from the student."""
    examples = read_jsonl(sft_file, SFTExample)
    r = train_branch(examples, student, work / "model", plan, show_progress=show_progress)
    summary: dict[str, Any] = {
        "examples": r.examples,
        "steps": r.steps,
        "first_loss": round(r.first_loss, 4),
        "final_loss": round(r.final_loss, 4),
        "train_tokens": r.train_tokens,
    }
    if isinstance(r, CurriculumResult):
        summary["stages"] = [
            {
                "name": st.name,
                "examples": st.examples,
                "steps": st.steps,
                "first_loss": round(st.first_loss, 4),
                "final_loss": round(st.final_loss, 4),
            }
            for st in r.stages
        ]
    return summary


def merge_stage(config: dict[str, Any], work: Path, show_progress: bool) -> dict[str, Any]:
    from branchmerge.merge import run_merge

    r = run_merge(config, work / "model", show_progress=show_progress)
    return {"method": config["merge_method"], "tensors": r.n_tensors}


def eval_stage(
    model_dir: Path, name: str, problems: list[Problem], spec: EvalSpec, work: Path, show_progress: bool
) -> dict[str, Any]:
    samples = evaluate_model(
        model_dir,
        problems,
        work / "samples.jsonl",
        model_name=name,
        n=spec.n,
        temperature=spec.temperature,
        top_p=spec.top_p,
        max_tokens=spec.max_tokens,
        seed=spec.seed,
        show_progress=show_progress,
    )
    table = accuracy_table(samples)[name]
    return {"accuracy": {d: round(a, 4) for d, (a, _) in table.items()}, "samples": len(samples)}
