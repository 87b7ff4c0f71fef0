"""What each `branchmerge train <method>` does once its options parse: build the method's request (`train/jobs.py`,
where the rules between options live), read the data, make one library call, and return the lines to print.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, SFTExample, Trace, read_jsonl

if TYPE_CHECKING:
    from branchmerge.train import CurriculumStage, SFTSettings
    from branchmerge.train.branches import BranchPlan
    from branchmerge.train.curriculum import CurriculumResult, CurriculumStageResult
    from branchmerge.train.jobs import DPOJob, GRPOJob, KDJob, RewardJob, SFTJob
    from branchmerge.train.sft import TrainResult

J = TypeVar("J", bound=BaseModel)
Domains = list[str] | None


def build_job(job: type[J], given: dict[str, Any], ctx: typer.Context) -> J:
    """`job` from the options given: those naming a field of its settings model go there, the rest to the job;
    an option left out keeps the library's default. An error names the option, as typed on the command line."""
    settings_fields = job.model_fields["settings"].annotation.model_fields  # type: ignore[union-attr]
    given = {k: v for k, v in given.items() if v is not None}
    settings = {k: v for k, v in given.items() if k in settings_fields}
    try:
        return job(settings=settings, **{k: v for k, v in given.items() if k not in settings})
    except ValidationError as e:
        raise BranchmergeError(_explain(e.errors()[0], ctx)) from None


def _explain(err: Any, ctx: typer.Context) -> str:
    """One validation error in the command line's words: `--flag 'value': what was wrong`."""
    flags = {p.name: p.opts[0] for p in ctx.command.params if p.name and p.opts}
    fields = [x for x in err["loc"] if isinstance(x, str) and x != "settings"]
    field = fields[-1] if fields else None
    if err["type"] == "literal_error":
        message = "expected one of " + ", ".join(re.findall(r"'([^']*)'", err["ctx"]["expected"]))
    elif err["type"] == "value_error":  # our own rules: they name fields, which read here as the options
        message = re.sub(r"\b[a-z][a-z0-9_]*\b", lambda m: flags.get(m[0], m[0]), str(err["ctx"]["error"]))
    else:
        message = err["msg"]
    if field is None:
        return message
    value = err["input"]
    shown = f" {value!r}" if isinstance(value, str | int | float) and not isinstance(value, bool) else ""
    return f"{flags.get(field, field)}{shown}: {message}"


def _problems(path: Path) -> dict[str, Problem]:
    return {p.id: p for p in read_jsonl(path, Problem)}


def _traces(data: Path, problems_file: Path, domains: Domains) -> tuple[list[Trace], dict[str, Problem]]:
    """The traces and their problems, both kept to `domains` when given; every trace must name a known problem."""
    problems = _problems(problems_file)
    traces = read_jsonl(data, Trace)
    unknown = sorted({t.problem_id for t in traces} - set(problems))
    if unknown:
        raise BranchmergeError(
            f"{data}: {len(unknown)} problem ids are not in {problems_file} (first: {unknown[0]!r})"
        )
    if domains:
        problems = {k: p for k, p in problems.items() if p.domain in domains}
        traces = [t for t in traces if t.problem_id in problems]
    return traces, problems


def _sft_examples(data: Path, domains: Domains) -> list[SFTExample]:
    return [e for e in read_jsonl(data, SFTExample) if not domains or e.domain in domains]


def _losses(r: TrainResult | CurriculumResult | CurriculumStageResult) -> str:
    return f"loss {r.first_loss:.3f} → {r.final_loss:.3f}"


# ------------------------------------------------------------------------------------------ SFT --------------


def run_sft(job: SFTJob, data: Path, base: Path, out: Path, domains: Domains) -> str:
    from branchmerge.train import load_curriculum

    stages = None if job.curriculum is None else load_curriculum(job.curriculum)
    examples = _sft_examples(data, domains)
    if job.experts is not None:
        return _experts(job, examples, base, out, stages)
    if stages is not None:
        return _curriculum(examples, base, out, job.settings, stages)
    return _plain_sft(job, examples, base, out)


def _plain_sft(job: SFTJob, examples: list[SFTExample], base: Path, out: Path) -> str:
    from branchmerge.train import train_sft
    from branchmerge.train.sft import split_heldout

    heldout: list[SFTExample] = []
    if job.eval_fraction is not None:
        examples, heldout = split_heldout(examples, job.eval_fraction, job.settings.seed)
    r = train_sft(examples, base, out, job.settings, eval_examples=heldout, label=out.name)
    resumed = f" (resumed at step {r.resumed_from_step})" if r.resumed_from_step is not None else ""
    losses = ", ".join(f"{d} {loss:.3f}" for d, loss in r.eval_losses.items())
    held = f"; held-out loss ({len(heldout)} examples): {losses}" if heldout else ""
    return f"{r.steps} steps{resumed} on {r.examples} examples, {_losses(r)}{held} → {out}"


def _curriculum(
    examples: list[SFTExample],
    base: Path,
    out: Path,
    settings: SFTSettings,
    stages: Sequence[CurriculumStage],
) -> str:
    """One line per stage, then the run's totals and where the stages are kept."""
    from branchmerge.train import train_curriculum
    from branchmerge.train.curriculum import describe_where, stages_dir

    r = train_curriculum(examples, base, out, stages, settings, label=out.name)
    lines = [
        f"stage {i}/{len(r.stages)} {s.name} ({describe_where(s.where)}): {s.examples} examples, "
        f"{s.steps} steps, {_losses(s)}{' (reused: unchanged since the last run)' if s.reused else ''}"
        for i, s in enumerate(r.stages, start=1)
    ]
    lines.append(f"{r.steps} steps in {len(r.stages)} stages → {out} (each stage kept in {stages_dir(out)}/)")
    return "\n".join(lines)


def _experts(
    job: SFTJob,
    examples: list[SFTExample],
    base: Path,
    out: Path,
    stages: Sequence[CurriculumStage] | None,
) -> str:
    """One expert per domain or teacher (and the mixture unless --no-mixture), all from `base`, in `out/`."""
    from branchmerge.train import plan_branches, train_branches

    assert job.experts is not None  # run_sft's branch
    budget = job.mixture_budget or "sum"
    plans = plan_branches(examples, job.experts, not job.no_mixture, budget, job.settings, curriculum=stages)
    results = train_branches(examples, base, out, plans)
    return "\n".join(_branch_line(p, results[p.name]) for p in plans)


def _branch_line(plan: BranchPlan, r: TrainResult | CurriculumResult) -> str:
    from branchmerge.train.curriculum import CurriculumResult, describe_where, stages_dir

    if isinstance(r, CurriculumResult):
        counts = " + ".join(str(s.examples) for s in r.stages)
        size = f"{len(r.stages)} stages ({counts} examples), {r.steps} steps"
        kept = f" (stages in {stages_dir(r.out_dir)}/)"
    else:
        size, kept = f"{r.examples} examples, {r.steps} steps", ""
    return f"{plan.name} ({describe_where(plan.where)}): {size}, {_losses(r)} → {r.out_dir}{kept}"


# ------------------------------------------------------------------------------- reward, grpo, dpo ----------


def run_reward(job: RewardJob, data: Path, base: Path, out: Path, domains: Domains) -> str:
    from branchmerge.train.reward_model import train_reward_model

    traces, problems = _traces(data, job.problems, domains)
    r = train_reward_model(traces, problems, base, out, job.target, job.settings, label=out.name)
    rho = "n/a" if r.spearman is None else f"{r.spearman:.2f}"
    return (
        f"{job.target} reward model on {r.train} traces ({r.skipped} without a {job.target} score skipped): "
        f"held-out ({r.heldout}) MAE {r.mae:.2f}, Spearman {rho} → {out}"
    )


def run_grpo(job: GRPOJob, data: Path, base: Path, out: Path, domains: Domains) -> str:
    from branchmerge.train.grpo import train_grpo

    problems = [p for p in read_jsonl(data, Problem) if not domains or p.domain in domains]
    r = train_grpo(
        problems,
        base,
        out,
        job.settings,
        rv_model=job.rv_model,
        rv_band=job.rv,
        cd_model=job.cd_model,
        cd_band=job.cd,
        lambda_rv=job.lambda_rv,
        lambda_cd=job.lambda_cd,
        label=out.name,
    )
    parts = ", ".join(f"{name.removesuffix('_reward')} {a:.2f} → {b:.2f}" for name, (a, b) in r.parts.items())
    return (
        f"{r.steps} GRPO steps on {r.problems} problems, reward {r.first_reward:.3f} → {r.last_reward:.3f} "
        f"({parts}; {r.clipped_ratio:.0%} cut at --max-completion-length) → {out}"
    )


def run_dpo(job: DPOJob, data: Path, base: Path, out: Path, domains: Domains) -> str:
    from branchmerge.train.dpo import build_preference_pairs, train_dpo

    traces, problems = _traces(data, job.problems, domains)
    rows, report = build_preference_pairs(traces, problems, job.pairs, job.rv, job.settings.seed)
    unpaired = ", ".join(f"{n} {why}" for why, n in sorted(report.problems_without_pair.items())) or "none"
    r = train_dpo(rows, base, out, job.settings, label=out.name)
    return (
        f"{r.pairs} pairs (problems without a pair: {unpaired}), {r.steps} DPO steps, loss {r.first_loss:.3f} → "
        f"{r.final_loss:.3f}, reward accuracy {r.first_accuracy:.2f} → {r.final_accuracy:.2f} → {out}"
    )


# ------------------------------------------------------------------------------------------ KD ---------------


def run_kd(job: KDJob, data: Path, base: Path, out: Path, domains: Domains) -> str:
    """Logit KD, online from --teacher, from a filled --kd-cache, or both (fill the cache, then train from it)."""
    from branchmerge.train import train_kd

    s = job.settings
    r = train_kd(_sft_examples(data, domains), base, out, s, job.teacher, job.kd_cache, label=out.name)
    lines = []
    if r.cache is not None:
        c = r.cache
        lines.append(
            f"cache {c.cache_dir}: {c.cached} examples cached ({c.skipped} already there), {c.tokens} tokens "
            f"at top-{c.k}: {c.bytes_per_token} bytes/token, {c.disk_bytes / 2**20:.1f} MiB on disk"
        )
    lines.append(
        f"{r.steps} KD steps ({r.mode}, {s.kd_loss} KL, τ {s.temperature:g}) on {r.examples} examples, "
        f"{_losses(r)} = {s.ce_weight:g}·CE + {s.kd_weight:g}·KD: CE {r.first_ce:.3f} → {r.final_ce:.3f}, "
        f"KD {r.first_kd:.3f} → {r.final_kd:.3f} → {out}"
    )
    return "\n".join(lines)
