"""The recipe's stage functions. Each reads files, writes into its own work folder and returns its typed summary
(`recipe/summaries.py`); `recipe/graph.py` wires them into the pipeline."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from branchmerge.cot.base import StepContext
from branchmerge.cot.registry import ProcessOptions, process_traces, resolve_steps
from branchmerge.evaluate.runner import evaluate_model
from branchmerge.evaluate.stats import accuracy_table
from branchmerge.recipe.schema import BuildSFTSpec, GenerateSpec, ProcessSpec, TeacherSpec
from branchmerge.recipe.specs import GRPOSpec, RewardModelsSpec
from branchmerge.recipe.summaries import (
    BuildSFTSummary,
    CurriculumStageSummary,
    EvalSummary,
    GenerateSummary,
    GRPOSummary,
    MergeSummary,
    ProcessSummary,
    RewardFit,
    RewardModelsSummary,
    StepSummary,
    TrainSummary,
)
from branchmerge.records import Problem, SFTExample, Trace, read_jsonl, write_jsonl
from branchmerge.teachers.config import TeacherConfig
from branchmerge.teachers.engines import serve_checkpoint
from branchmerge.train.branches import BranchPlan, train_branch
from branchmerge.train.curriculum import CurriculumResult
from branchmerge.train.sft_data import build_sft_examples


@contextlib.contextmanager
def teacher_endpoint(
    teacher: TeacherSpec, checkpoint: Path | None, engine: str = "auto"
) -> Iterator[TeacherConfig]:
    """The teacher as a client config; a local checkpoint is served on 127.0.0.1 by `engine` while the block
    runs, the built-in server decoding up to `max_concurrency` requests in one batch."""
    passed = teacher.model_dump(exclude={"name", "generates", "checkpoint", "base_url", "model"})
    if checkpoint is not None:
        model = teacher.model or checkpoint.name
        # its own process: the client's event loop here and the server's decoding then use a core each
        with serve_checkpoint(
            checkpoint,
            engine=engine,
            model_name=model,
            what="engine",
            own_process=True,
            max_batch=teacher.max_concurrency,
        ) as url:
            yield TeacherConfig(name=teacher.name, base_url=url, model=model, **passed)
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
    engine: str = "auto",
) -> GenerateSummary:
    """Send every problem to the teacher over HTTP; a local checkpoint is served on 127.0.0.1 first."""
    from branchmerge.teachers.client import generate_traces

    with teacher_endpoint(teacher, checkpoint, engine) as cfg:
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
    return GenerateSummary(
        teacher=teacher.name,
        traces=len(traces),
        errors=sum(t.error is not None for t in traces),
        truncated=sum(t.finish_reason == "length" for t in traces),
        requests_this_run=summary.requests,
    )


def process_stage(
    problems: list[Problem],
    trace_files: list[Path],
    spec: ProcessSpec,
    judge: tuple[TeacherSpec, Path | None] | None,
    student: Path,
    work: Path,
    show_progress: bool,
    engine: str = "auto",
) -> ProcessSummary:
    """The CoT processors over all teachers' traces; the judge (a recipe teacher) and, for difficulty by pass
    rate, the student are served while the steps run. Writes processed.jsonl and each step's counts."""
    traces = [t for f in trace_files for t in read_jsonl(f, Trace)]
    steps = resolve_steps(spec.steps)
    options = ProcessOptions.model_validate(spec.model_dump(exclude={"steps", "judge"}))
    by_student = "difficulty" in steps and options.difficulty.method == "student"
    with contextlib.ExitStack() as stack:
        judge_cfg = stack.enter_context(teacher_endpoint(*judge, engine)) if judge is not None else None
        student_cfg = None
        if by_student:
            url = stack.enter_context(serve_checkpoint(student, engine=engine, model_name=student.name))
            student_cfg = TeacherConfig(name="student", base_url=url, model=student.name, max_concurrency=32)
        ctx = StepContext(work, "processed", judge_cfg, student_cfg, show_progress=show_progress)
        counts = process_traces(
            steps, traces, {p.id: p for p in problems}, options, work / "processed.jsonl", ctx
        )
    return ProcessSummary(
        traces=len(traces),
        kept=sum(counts[-1].after.values()),
        steps={
            c.step: StepSummary(after=sum(c.after.values()), removed=c.removed, marked=c.flagged)
            for c in counts
        },
        table=next((c.table for c in counts if c.step == "verify"), []),
    )


def build_sft_stage(
    problems: list[Problem], verified: Path, student: Path, spec: BuildSFTSpec, work: Path
) -> BuildSFTSummary:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student)
    examples, report = build_sft_examples(
        read_jsonl(verified, Trace), {p.id: p for p in problems}, tokenizer, max_length=spec.max_length
    )
    write_jsonl(work / "sft.jsonl", examples)
    per_domain: dict[str, int] = {}
    for e in examples:
        per_domain[e.domain] = per_domain.get(e.domain, 0) + 1
    return BuildSFTSummary(
        examples=report.examples, too_long=report.too_long, tokens=report.tokens, per_domain=per_domain
    )


def train_stage(
    sft_file: Path, student: Path, plan: BranchPlan, work: Path, show_progress: bool
) -> TrainSummary:
    """Train one branch (an expert or the mixture, with or without a curriculum) from the student."""
    examples = read_jsonl(sft_file, SFTExample)
    r = train_branch(examples, student, work / "model", plan, show_progress=show_progress)
    summary = TrainSummary(
        examples=r.examples,
        steps=r.steps,
        first_loss=round(r.first_loss, 4),
        final_loss=round(r.final_loss, 4),
        train_tokens=r.train_tokens,  # non-padding tokens seen over all steps
        loss_tokens=r.loss_tokens,
    )
    if isinstance(r, CurriculumResult):  # set only here, so a plain branch's stage.json has no "stages"
        summary.stages = [
            CurriculumStageSummary(
                name=st.name,
                examples=st.examples,
                steps=st.steps,
                first_loss=round(st.first_loss, 4),
                final_loss=round(st.final_loss, 4),
            )
            for st in r.stages
        ]
    return summary


def merge_stage(config: dict[str, Any], work: Path, show_progress: bool) -> MergeSummary:
    """Run the merge into model/. A data-aware merge keeps its calibration statistics in the work folder (so an
    interrupted stage reuses them) unless the config names a `calibration.cache_dir`; they are removed once the
    model is written, since the finished stage is never run again (RegMean's Gram matrices of a 4B model are
    tens of GB)."""
    from branchmerge.merge import run_merge

    r = run_merge(config, work / "model", show_progress=show_progress)
    if not (config.get("calibration") or {}).get("cache_dir"):
        shutil.rmtree(work / "calibration-cache", ignore_errors=True)
    return MergeSummary(method=config["merge_method"], tensors=r.n_tensors)


def reward_models_stage(
    problems: list[Problem],
    processed: Path,
    student: Path,
    spec: RewardModelsSpec,
    work: Path,
    show_progress: bool,
) -> RewardModelsSummary:
    """One regressor per target (RV, CD) from the student, on the processed traces' judge scores."""
    from branchmerge.train.reward_model import train_reward_model

    traces = read_jsonl(processed, Trace)
    fits: dict[str, RewardFit] = {}
    for target in spec.targets:
        r = train_reward_model(
            traces,
            {p.id: p for p in problems},
            student,
            work / target,
            target=target,
            settings=spec.settings,
            label=f"reward-{target}",
            show_progress=show_progress,
        )
        fits[target] = RewardFit(
            train=r.train,
            heldout=r.heldout,
            skipped=r.skipped,
            mae=round(r.mae, 4),
            spearman=None if r.spearman is None else round(r.spearman, 4),
        )
    return RewardModelsSummary(fits)


def grpo_stage(
    problems: list[Problem],
    start: Path,
    reward_dir: Path | None,
    spec: GRPOSpec,
    work: Path,
    show_progress: bool,
) -> GRPOSummary:
    """GRPO from `start`; the RV / CD rewards come from the reward-model stage's regressors when there is one."""
    from branchmerge.train.grpo import train_grpo

    def scorer(target: str) -> Path | None:
        return reward_dir / target if reward_dir is not None and (reward_dir / target).exists() else None

    r = train_grpo(
        problems[: spec.problems],
        start,
        work / "model",
        spec.settings,
        rv_model=scorer("rv"),
        rv_band=spec.rv_band,
        cd_model=scorer("cd"),
        cd_band=spec.cd_band,
        lambda_rv=spec.lambda_rv,
        lambda_cd=spec.lambda_cd,
        label=spec.name,
        show_progress=show_progress,
    )
    return GRPOSummary(
        steps=r.steps,
        problems=r.problems,
        first_reward=round(r.first_reward, 4),
        last_reward=round(r.last_reward, 4),
        clipped_ratio=round(r.clipped_ratio, 4),
    )


def eval_stage(
    model_dir: Path,
    name: str,
    problems: list[Problem],
    benchmark: str,
    sampling: dict[str, Any],
    judge: TeacherConfig | None,
    work: Path,
    show_progress: bool,
    engine: str = "auto",
) -> EvalSummary:
    samples = evaluate_model(
        model_dir,
        problems,
        work / "samples.jsonl",
        model_name=name,
        benchmark=benchmark,
        judge=judge,
        show_progress=show_progress,
        engine=engine,
        **sampling,
    )
    table = accuracy_table(samples)[name]
    return EvalSummary(accuracy={d: round(a, 4) for d, (a, _) in table.items()}, samples=len(samples))
