"""Run a model on benchmark problems, `n` samples each, and grade every sample: `branchmerge eval` as a library.

A model is an OpenAI-compatible endpoint (a `TeacherConfig`, asked through the teachers client: bounded
concurrency, rate limits, retries) or a local checkpoint folder. Two files per run, side by side:
- `outputs_path(OUT)` (OUT's stem + `.outputs.jsonl`): the raw completions, one Trace per sample (teacher = the
  model name, sample = 0..n-1), appended as requests (or local batches) complete. A crash loses at most what was
  in flight; a rerun asks only for the missing keys, and asks again for requests that failed (error traces).
- `OUT`: the EvalSamples, appended in chunks as they are graded, while generation goes on. A rerun grades only
  the (item, sample) pairs of this model not yet in `OUT`.
`OUT` is the run's state: delete it to start over (completions of a model with no samples in `OUT` are dropped,
so a fresh run never reuses another checkpoint's), or pass `regrade=True` to grade the kept completions again.

This module checks the request and picks the way to run the model; `generation` makes the completions (endpoint,
in-process or served checkpoint) and counts reasoning tokens; `grading` grades them as they arrive and resumes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from branchmerge.errors import BranchmergeError
from branchmerge.evaluate.generation import (
    DEFAULT_BATCH,
    Counter,
    Sampling,
    endpoint_generate,
    estimated_reasoning_tokens,
    in_process,
    served,
)
from branchmerge.evaluate.grading import generate_and_grade, outputs_path, truncation_rate
from branchmerge.graders import GRADERS, unknown_graders
from branchmerge.judge import judge_configured, judging
from branchmerge.records import EvalSample, Problem
from branchmerge.teachers.config import TeacherConfig
from branchmerge.teachers.engines import resolve_engine

__all__ = ["evaluate_model", "judge_cache_path", "outputs_path", "truncation_rate"]


def judge_cache_path(out_path: str | Path) -> Path:
    """The default verdict cache of `out_path`'s run: its stem + `.judge.jsonl`."""
    out = Path(out_path)
    return out.with_name(f"{out.stem}.judge.jsonl")


def evaluate_model(
    model: TeacherConfig | str | Path,
    problems: Sequence[Problem],
    out_path: str | Path,
    *,
    model_name: str | None = None,
    benchmark: str = "tinylab",
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_tokens: int = 256,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
    serve: bool = False,
    engine: str = "auto",
    judge: TeacherConfig | None = None,
    judge_cache: str | Path | None = None,
    regrade: bool = False,
    chunk_size: int = 64,
    workers: int | None = None,
    show_progress: bool = True,
) -> list[EvalSample]:
    """Generate `n` samples per problem with `model`, grade them, append EvalSamples to `out_path`; resumable.

    `model` is an endpoint config or a checkpoint folder (`batch_size` rows decoded together, in-process or,
    with `serve`, by a server on 127.0.0.1; `engine` "vllm", or "auto" on a machine with vLLM and a CUDA GPU,
    serves it with vLLM, see `teachers.engines`). `model_name` (default: the config's name or the folder's name) is
    the `model` of every sample and, with (item, sample), the key a rerun skips. `judge` grades judge items
    whose spec names no judge, its verdicts cached in `judge_cache` (default `judge_cache_path(out_path)`).
    `regrade` grades this model's completions again (after a grader fix) instead of keeping its samples in
    `out_path`. `workers` grading processes (default: all cores). Returns this model's samples of these problems in problem
    order. When some requests failed, everything else is graded first, then BranchmergeError says how many
    (rerun to ask them again).
    """
    if n < 1 or temperature < 0 or not 0 < top_p <= 1 or max_tokens < 1 or batch_size < 1:
        raise BranchmergeError(
            f"sampling: need n >= 1, temperature >= 0, 0 < top_p <= 1, max_tokens >= 1, batch_size >= 1 (got n={n}, "
            f"temperature={temperature}, top_p={top_p}, max_tokens={max_tokens}, batch_size={batch_size})"
        )
    problems = list(problems)
    _check_graders(problems, judge)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    s = Sampling(n, temperature, top_p, max_tokens, seed)
    count: Counter
    with contextlib.ExitStack() as stack:
        if isinstance(model, TeacherConfig):
            endpoint = model.model_copy(update={"name": model_name or model.name})
            name, count = endpoint.name, estimated_reasoning_tokens
            generate = endpoint_generate(endpoint, s, show_progress)
        elif serve or resolve_engine(engine) == "vllm":  # vLLM runs only as a server
            rows = min(batch_size, n * len(problems)) or 1  # a batch that fills up starts without waiting
            endpoint, count = stack.enter_context(served(Path(model), model_name, n, rows, engine))
            name, generate = endpoint.name, endpoint_generate(endpoint, s, show_progress)
        else:
            name, generate, count = in_process(Path(model), model_name, s, batch_size, show_progress)
        if judge is not None:
            stack.enter_context(judging(judge, judge_cache or judge_cache_path(out)))
        return generate_and_grade(
            name, generate, count, problems, out, s, benchmark, chunk_size, workers, regrade
        )


def _check_graders(problems: list[Problem], judge: TeacherConfig | None) -> None:
    """Fail before any request when a grader is unknown or judge items have no judge."""
    bad = unknown_graders(p.grader for p in problems)
    if bad:
        unknown, first = sorted({kind for _, kind in bad}), problems[bad[0][0]].id
        raise BranchmergeError(
            f"grader type(s) {unknown} not known (item {first}; known: {', '.join(sorted(GRADERS))})"
        )
    judged = [p.id for p in problems if p.grader.get("type") == "judge" and "judge" not in p.grader]
    if judged and judge is None and not judge_configured():
        raise BranchmergeError(
            f"{len(judged)} item(s) (first: {judged[0]}) are graded by an LLM judge, and no judge is given: "
            "pass judge=TeacherConfig(...) (on the command line: --judge URL --judge-model NAME)"
        )
