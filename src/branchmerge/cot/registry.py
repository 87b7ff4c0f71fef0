"""The processor registry, every step's options in one model, the two DistilQwen presets, and `process_traces`,
which runs a chain of steps. Adding a processor: its module (options model, `run`, `PROCESSOR`), one entry in
`PROCESSORS` and one field of `ProcessOptions` (a test keeps the two in step).

Presets (DistilQwen's two pipelines; README, "Using the parts one by one": `process`):
- slow-thinking (DistilQwen2.5-R1): verify, dedup, decontaminate, difficulty, rewrite. The output carries
  `difficulty`, ready for a curriculum (medium first, then hard).
- adaptive-thinking (OmniThought / DistilQwen-ThoughtY): verify, dedup, decontaminate, rv_cd, sample. The
  sample step keeps the RV/CD bands chosen for the student and balances the domains.

A chain writes each step's output and side files (counts, verdicts, contamination) under `OUT.steps/`, as
`NN-STEP.jsonl`, and the last step's traces to OUT. Judge answers are cached in one file for the whole chain,
so a rerun after a crash asks the judge only what it had not answered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from branchmerge.cot import decontaminate, dedup, difficulty, rewrite, rv_cd, sample, verify
from branchmerge.cot.base import Processor, StepContext, StepOptions
from branchmerge.cot.counts import StepCounts, count_step
from branchmerge.cot.decontaminate import DecontaminateOptions
from branchmerge.cot.dedup import DedupOptions
from branchmerge.cot.difficulty import DifficultyOptions
from branchmerge.cot.rewrite import RewriteOptions
from branchmerge.cot.sample import SampleSpec
from branchmerge.cot.verify import VerifyOptions
from branchmerge.errors import BranchmergeError
from branchmerge.judge.calls import JudgeSettings
from branchmerge.records import Problem, Trace, write_jsonl

PROCESSORS: dict[str, Processor] = {
    p.name: p
    for p in (
        verify.PROCESSOR,
        dedup.PROCESSOR,
        decontaminate.PROCESSOR,
        difficulty.PROCESSOR,
        rv_cd.PROCESSOR,
        rewrite.PROCESSOR,
        sample.PROCESSOR,
    )
}


class ProcessOptions(StepOptions):
    """Every step's settings, one section per processor with options; a recipe's `process:` section and the
    CLI's options both fill this."""

    verify: VerifyOptions = VerifyOptions()
    dedup: DedupOptions = DedupOptions()
    decontaminate: DecontaminateOptions = DecontaminateOptions()
    difficulty: DifficultyOptions = DifficultyOptions()
    rewrite: RewriteOptions = RewriteOptions()
    sample: SampleSpec = SampleSpec()
    judging: JudgeSettings = JudgeSettings()  # sampling of judge calls (the judge itself is an endpoint)

    def of(self, step: str) -> StepOptions | None:
        """The options section of `step`, or None for a processor without settings."""
        return getattr(self, step) if PROCESSORS[step].options is not None else None


PRESETS: dict[str, list[str]] = {
    "slow-thinking": ["verify", "dedup", "decontaminate", "difficulty", "rewrite"],
    "adaptive-thinking": ["verify", "dedup", "decontaminate", "rv_cd", "sample"],
}


def resolve_steps(spec: str | list[str]) -> list[str]:
    """A preset name, a step name, or steps joined by commas -> the list of steps; unknown names are errors."""
    names = spec if isinstance(spec, list) else PRESETS.get(spec, spec.split(","))
    steps = [s.strip() for s in names if s.strip()]
    bad = [s for s in steps if s not in PROCESSORS]
    if bad or not steps:
        raise BranchmergeError(
            f"process: '{bad[0] if bad else spec}' is not a processor or preset "
            f"(processors: {', '.join(PROCESSORS)}; presets: {', '.join(PRESETS)})"
        )
    return steps


def check_ready(steps: list[str], options: ProcessOptions, ctx: StepContext) -> None:
    """Before any step runs: every judge or student a step will call is configured, and decontaminate run on
    its own has benchmarks to check against (in a preset it is skipped, with a note, when none are named)."""
    if steps == ["decontaminate"] and not options.decontaminate.benchmarks:
        raise BranchmergeError("decontaminate: name the benchmark files (--benchmark FILE)")
    if ctx.judge is None:
        needing = [s for s in steps if PROCESSORS[s].needs_judge(options.of(s))]
        if needing:
            raise BranchmergeError(f"{', '.join(needing)}: needs a judge endpoint (none was given)")
    if "difficulty" in steps and options.difficulty.method == "student" and ctx.student is None:
        raise BranchmergeError("difficulty with method 'student' needs the student's endpoint")


def process_traces(
    steps: list[str],
    traces: list[Trace],
    problems: dict[str, Problem],
    options: ProcessOptions,
    out: Path,
    ctx: StepContext | None = None,
    on_step: Callable[[StepCounts], None] | None = None,
) -> list[StepCounts]:
    """Run `steps` in order over `traces`; write the kept traces to `out` and each step's counts next to its
    output. `ctx` supplies the judge/student endpoints; its folder and stem are set per step here."""
    missing = sorted({t.problem_id for t in traces} - set(problems))
    if missing:
        raise BranchmergeError(f"traces of problems that are not in the problems file, e.g. '{missing[0]}'")
    base = ctx or StepContext(out.parent, out.stem)
    check_ready(steps, options, base)
    cache = base.judge_cache or out.parent / f"{out.stem}.judge.jsonl"  # one for the whole chain
    chain = len(steps) > 1
    folder = out.parent / f"{out.stem}.steps" if chain else out.parent
    all_counts = []
    for i, step in enumerate(steps, start=1):
        stem = f"{i:02d}-{step}" if chain else out.stem
        ctx_i = dataclasses.replace(
            base, out_dir=folder, stem=stem, judge_cache=cache, judging=options.judging
        )
        folder.mkdir(parents=True, exist_ok=True)
        result = PROCESSORS[step].run(traces, problems, options.of(step), ctx_i)
        counts = count_step(step, traces, result.kept, problems, result.removed)
        counts.flagged, counts.note, counts.table = dict(result.flagged), result.note, result.table
        write_jsonl(folder / f"{stem}.jsonl" if chain else out, result.kept)
        counts.write(folder / f"{stem}.counts.json")
        all_counts.append(counts)
        if on_step is not None:
            on_step(counts)
        traces = result.kept
    if chain:
        write_jsonl(out, traces)
    return all_counts
