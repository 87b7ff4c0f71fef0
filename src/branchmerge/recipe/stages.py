"""The recipe's stages. Each reads files, writes into its own work folder and returns a summary dict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from branchmerge.cot.verify import verify_traces
from branchmerge.evaluate.runner import evaluate_model
from branchmerge.evaluate.stats import accuracy_table
from branchmerge.recipe.schema import BuildSFTSpec, EvalSpec, GenerateSpec, ProblemsSpec, TeacherSpec
from branchmerge.records import Problem, SFTExample, Trace, read_jsonl, write_jsonl
from branchmerge.train.sft import SFTSettings, train_sft
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


def generate_stage(
    problems: list[Problem],
    teacher: TeacherSpec,
    spec: GenerateSpec,
    checkpoint: Path | None,
    work: Path,
    show_progress: bool,
) -> dict[str, Any]:
    """Send every problem to the teacher over HTTP; a local checkpoint is served on 127.0.0.1 first."""
    from branchmerge.teachers.client import TeacherConfig, generate_traces
    from branchmerge.teachers.serve import running_server

    def call(base_url: str | list[str], model: str) -> Any:
        passed = teacher.model_dump(exclude={"name", "checkpoint", "base_url", "model"})
        cfg = TeacherConfig(name=teacher.name, base_url=base_url, model=model, **passed)
        return generate_traces(
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

    if checkpoint is not None:
        with running_server(checkpoint) as base_url:
            summary = call(base_url, teacher.model or checkpoint.name)
    else:
        assert teacher.base_url is not None and teacher.model is not None
        summary = call(teacher.base_url, teacher.model)
    traces = read_jsonl(work / "traces.jsonl", Trace)
    return {
        "teacher": teacher.name,
        "traces": len(traces),
        "errors": sum(t.error is not None for t in traces),
        "truncated": sum(t.finish_reason == "length" for t in traces),
        "requests_this_run": getattr(summary, "requests", None),
    }


def verify_stage(problems: list[Problem], trace_files: list[Path], work: Path) -> dict[str, Any]:
    traces = [t for f in trace_files for t in read_jsonl(f, Trace)]
    kept, report = verify_traces(traces, {p.id: p for p in problems})
    write_jsonl(work / "verified.jsonl", kept)
    (work / "verify.json").write_text(json.dumps(report.rows(), indent=2))
    return {"traces": len(traces), "kept": report.kept, "dropped": report.dropped, "table": report.rows()}


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
    sft_file: Path,
    student: Path,
    settings: SFTSettings,
    domains: list[str] | None,
    label: str,
    work: Path,
    show_progress: bool,
) -> dict[str, Any]:
    """Train one model on the SFT examples of `domains` (all domains when None)."""
    examples = [e for e in read_jsonl(sft_file, SFTExample) if domains is None or e.domain in domains]
    r = train_sft(examples, student, work / "model", settings, label=label, show_progress=show_progress)
    return {
        "examples": r.examples,
        "steps": r.steps,
        "first_loss": round(r.first_loss, 4),
        "final_loss": round(r.final_loss, 4),
        "train_tokens": r.train_tokens,
    }


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
