"""Run a model on benchmark problems, `n` samples each, and grade every sample: `branchmerge eval` as a library.

A model is an OpenAI-compatible endpoint (a `TeacherConfig`, asked through the teachers client: bounded
concurrency, rate limits, retries) or a local checkpoint folder. Two files per run, side by side:
- `outputs_path(OUT)` (OUT's stem + `.outputs.jsonl`): the raw completions, one Trace per sample (teacher = the
  model name, sample = 0..n-1), appended as requests (or local batches) complete. A crash loses at most what was
  in flight; a rerun asks only for the missing keys, and asks again for requests that failed (error traces).
- `OUT`: the EvalSamples, appended in chunks as they are graded. Generation runs in a background thread while
  this thread reads the outputs file as it grows and grades what is new, so grading overlaps generation. A rerun
  grades only the (item, sample) pairs of this model not yet in `OUT`.
`OUT` is the run's state: delete it to start over (completions of a model with no samples in `OUT` are dropped,
so a fresh run never reuses another checkpoint's), or pass `regrade=True` to grade the kept completions again.

Grading sees the answer without the reasoning (`Trace.answer`, the text after the last `</think>`). A completion
stopped by the token limit with no answer, or with no reasoning part at all (Qwen3 thinking templates put
`<think>` in the prompt, so a completion cut mid-thought has no tags and would otherwise read as all answer),
fails with detail "truncated" without reaching the grader; `truncation_rate` gives the share. Everything else goes
to `graders.grade_many` (a process pool over all cores; judge items go to the judge given here).

`reasoning_tokens`: for a local checkpoint, the reasoning text counted with the model's tokenizer. For an
endpoint, an estimate: the completion tokens the server counted minus the answer's estimated tokens (4 characters
per token), when there is reasoning text or the server counted more than twice the answer's estimate (reasoning
the API did not return, as hosted reasoning models do); otherwise 0. A truncated completion is all reasoning.

Local checkpoints are decoded in-process by default (the same seeds and Trace records a server would give);
`serve=True` serves them on 127.0.0.1 with `teachers.serve.running_server` and goes through the client like any
endpoint. Measured on the quick demo's evaluation (60 items, greedy, 200 max tokens, one torch thread, 2 shared
cores; median seconds per model over 3 checkpoints x 3 runs, in two sessions; the same passes every way):
in-process 1.30 / 0.93, served 2.03 / 1.39, the former in-process loop 1.56 / 0.95. Serving costs a fixed
0.5-0.7 s per model (HTTP for every request, the server's start and shutdown tick): about 5 s over the demo's
nine evaluations, nothing on a long run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from branchmerge.errors import BranchmergeError
from branchmerge.graders import GRADERS, Grade, grade_many
from branchmerge.graders.judge import judge_configured, judging
from branchmerge.records import EvalSample, Problem, Trace, append_jsonl, read_jsonl, write_jsonl
from branchmerge.teachers.client import agenerate, drop_error_traces, repair_tail, request_seed
from branchmerge.teachers.config import TeacherConfig

TRUNCATED = "truncated"
POLL_S = 0.1  # how often the grader looks for new completions
FLUSH_S = 2.0  # a partial chunk is graded once its oldest completion has waited this long
SERVE_BATCH_WAIT_S = 0.05  # a served local model waits this long for its batch to fill

Counter = Callable[[Trace], int]  # reasoning tokens of a completion
Generate = Callable[[list[Problem], Path, threading.Event], None]  # (problems, outputs file, stop) -> None


@dataclass(frozen=True)
class Sampling:
    n: int
    temperature: float
    top_p: float
    max_tokens: int
    seed: int


def outputs_path(out_path: str | Path) -> Path:
    """Where the raw completions of `out_path`'s run go: its stem + `.outputs.jsonl`."""
    out = Path(out_path)
    return out.with_name(f"{out.stem}.outputs.jsonl")


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
    batch_size: int = 64,
    serve: bool = False,
    judge: TeacherConfig | None = None,
    judge_cache: str | Path | None = None,
    regrade: bool = False,
    chunk_size: int = 64,
    workers: int | None = None,
    show_progress: bool = True,
) -> list[EvalSample]:
    """Generate `n` samples per problem with `model`, grade them, append EvalSamples to `out_path`; resumable.

    `model` is an endpoint config or a checkpoint folder (`batch_size` rows decoded together, in-process or,
    with `serve`, by a server on 127.0.0.1). `model_name` (default: the config's name or the folder's name) is
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
            generate = _endpoint_generate(endpoint, s, show_progress)
        elif serve:
            rows = min(batch_size, n * len(problems)) or 1  # a batch that fills up starts without waiting
            endpoint, count = stack.enter_context(_served(Path(model), model_name, n, rows))
            name, generate = endpoint.name, _endpoint_generate(endpoint, s, show_progress)
        else:
            name, generate, count = _in_process(Path(model), model_name, s, batch_size, show_progress)
        if judge is not None:
            stack.enter_context(judging(judge, judge_cache or judge_cache_path(out)))
        return _run(name, generate, count, problems, out, s, benchmark, chunk_size, workers, regrade)


def truncation_rate(samples: Sequence[EvalSample]) -> float:
    """The share of samples cut off by the token limit before they gave an answer."""
    return sum(s.detail == TRUNCATED for s in samples) / len(samples) if samples else 0.0


# --------------------------------------------------------------------------------------------- grading


def is_truncated(trace: Trace) -> bool:
    """Stopped by the token limit before an answer: no answer, or no reasoning part (cut inside a thought whose
    `<think>` was in the prompt)."""
    return trace.finish_reason == "length" and not (trace.answer and trace.reasoning)


def estimated_reasoning_tokens(trace: Trace) -> int:
    """Reasoning length from the server's completion count, for endpoints whose tokenizer we do not have."""
    if is_truncated(trace):
        return trace.completion_tokens
    answer = math.ceil(len(trace.answer) / 4)
    if trace.reasoning or trace.completion_tokens > 2 * answer:
        return max(trace.completion_tokens - answer, 0)
    return 0


def _check_graders(problems: list[Problem], judge: TeacherConfig | None) -> None:
    """Fail before any request when a grader is unknown or judge items have no judge."""
    kinds = {p.grader.get("type", "exact") for p in problems}
    unknown = sorted(kinds - set(GRADERS))
    if unknown:
        first = next(p.id for p in problems if p.grader.get("type", "exact") in unknown)
        raise BranchmergeError(
            f"grader type(s) {unknown} not known (item {first}; known: {', '.join(sorted(GRADERS))})"
        )
    judged = [p.id for p in problems if p.grader.get("type") == "judge" and "judge" not in p.grader]
    if judged and judge is None and not judge_configured():
        raise BranchmergeError(
            f"{len(judged)} item(s) (first: {judged[0]}) are graded by an LLM judge, and no judge is given: "
            "pass judge=TeacherConfig(...) (on the command line: --judge URL --judge-model NAME)"
        )


def _grade(
    traces: list[Trace], problems: dict[str, Problem], workers: int | None
) -> list[tuple[Trace, Grade]]:
    todo = [t for t in traces if not is_truncated(t)]
    items = [(t.answer, problems[t.problem_id].reference, problems[t.problem_id].grader) for t in todo]
    grades = dict(zip((t.key for t in todo), grade_many(items, workers, errors="record"), strict=True))
    return [(t, grades.get(t.key, Grade(False, TRUNCATED))) for t in traces]


def _sample(trace: Trace, g: Grade, problem: Problem, benchmark: str, count: Counter) -> EvalSample:
    return EvalSample(
        model=trace.teacher,
        benchmark=benchmark,
        item_id=problem.id,
        domain=problem.domain,
        level=problem.level,
        sample=trace.sample,
        output=trace.answer,
        reasoning_tokens=count(trace),
        output_tokens=trace.completion_tokens,
        finish_reason=trace.finish_reason,
        passed=g.passed,
        detail=g.detail or g.error or "",
    )


# --------------------------------------------------------------------------------------------- the run


def _run(
    name: str,
    generate: Generate,
    count: Counter,
    problems: list[Problem],
    out: Path,
    s: Sampling,
    benchmark: str,
    chunk_size: int,
    workers: int | None,
    regrade: bool,
) -> list[EvalSample]:
    by_id = {p.id: p for p in problems}
    outputs = outputs_path(out)
    repair_tail(out)  # a torn last line from a crash would glue onto the next append
    done = read_jsonl(out, EvalSample) if out.exists() else []
    mine = [x for x in done if x.model == name]
    if regrade and mine:
        write_jsonl(out, [x for x in done if x.model != name])
        mine = []
    # Completions of a model with no samples in OUT belong to a run whose OUT was deleted: start over.
    _prepare_outputs(outputs, name, s.temperature, forget=not mine and not regrade)
    drop_error_traces(outputs, {name})  # failed requests are asked again
    graded = {(x.item_id, x.sample): x for x in mine}
    todo = [p for p in problems if any((p.id, k) not in graded for k in range(s.n))]
    tail = _Tail(outputs)
    failed: list[Trace] = []
    pending: dict[tuple[str, int], Trace] = {}
    since = time.monotonic()

    def flush() -> None:
        batch = list(pending.values())
        for start in range(0, len(batch), chunk_size):
            new = [
                _sample(t, g, by_id[t.problem_id], benchmark, count)
                for t, g in _grade(batch[start : start + chunk_size], by_id, workers)
            ]
            append_jsonl(out, new)
            graded.update(((x.item_id, x.sample), x) for x in new)
        pending.clear()

    background = _Background(lambda stop: generate(todo, outputs, stop) if todo else None)
    try:
        while True:
            finished = background.wait(POLL_S)
            for t in tail.read():
                key = (t.problem_id, t.sample)
                if t.teacher != name or t.problem_id not in by_id or t.sample >= s.n or key in graded:
                    continue
                if t.error is not None:
                    failed.append(t)
                elif key not in pending:
                    since = since if pending else time.monotonic()
                    pending[key] = t
            if pending and (finished or len(pending) >= chunk_size or time.monotonic() - since > FLUSH_S):
                flush()
            if finished:
                break
    finally:
        background.cancel()  # a no-op once it finished; on an error or Ctrl-C it stops generating
    background.result()
    if failed:
        raise BranchmergeError(
            f"{name}: {len(failed)} sample(s) got no completion (first, {failed[0].problem_id}: "
            f"{failed[0].error}); the others are graded in {out}; rerun to ask for the failed ones again"
        )
    return [graded[(p.id, k)] for p in problems for k in range(s.n) if (p.id, k) in graded]


def _prepare_outputs(outputs: Path, name: str, temperature: float, forget: bool) -> None:
    """Drop the model's completions (`forget`), or check they were sampled at this run's temperature."""
    if not outputs.exists():
        return
    traces = read_jsonl(outputs, Trace)
    if forget:
        keep = [t for t in traces if t.teacher != name]
        if len(keep) < len(traces):
            write_jsonl(outputs, keep)
        return
    for t in traces:
        if t.teacher == name and t.temperature != temperature:
            raise BranchmergeError(
                f"{outputs}: holds {name}'s completions at temperature {t.temperature}, not {temperature}; "
                "write the samples to another file, or delete this run's samples file to start over"
            )


class _Tail:
    """The complete lines appended to a JSONL file of Traces since the last read."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def read(self) -> list[Trace]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self.offset += end
        return [Trace.model_validate_json(line) for line in data[:end].splitlines() if line.strip()]


class _Background:
    """`work(stop)` in a daemon thread; its exception is raised again by `result()`."""

    def __init__(self, work: Callable[[threading.Event], None]) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            try:
                work(self.stop)
            except BaseException as e:  # handed to the caller by result()
                self.error = e

        self.thread = threading.Thread(target=run, name="branchmerge-eval-generate", daemon=True)
        self.thread.start()

    def wait(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def cancel(self) -> None:
        self.stop.set()
        self.thread.join()

    def result(self) -> None:
        if self.error is not None and not isinstance(self.error, asyncio.CancelledError):
            raise self.error


# --------------------------------------------------------------------------------------------- generation


def _endpoint_generate(endpoint: TeacherConfig, s: Sampling, show_progress: bool) -> Generate:
    def generate(problems: list[Problem], outputs: Path, stop: threading.Event) -> None:
        coroutine = agenerate(
            problems,
            endpoint,
            outputs,
            n=s.n,
            temperatures=(s.temperature,),
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            seed=s.seed,
            show_progress=show_progress,
        )
        asyncio.run(_until(coroutine, stop))

    return generate


async def _until(coroutine: Coroutine[Any, Any, Any], stop: threading.Event) -> None:
    """Run `coroutine`, cancelling it (requests in flight included) once `stop` is set."""
    task = asyncio.ensure_future(coroutine)
    while not stop.is_set():
        finished, _ = await asyncio.wait({task}, timeout=POLL_S)
        if finished:
            task.result()
            return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _in_process(
    model_dir: Path, model_name: str | None, s: Sampling, batch_size: int, show_progress: bool
) -> tuple[str, Generate, Counter]:
    """Decode the checkpoint here, `batch_size` samples at a time, writing the Traces a server would have sent
    (same seeds: the request's seed + sample index)."""
    from transformers import AutoTokenizer

    from branchmerge.teachers.local import LocalModel, SamplingParams

    lm = LocalModel(model_dir)
    name = model_name or lm.name

    def generate(problems: list[Problem], outputs: Path, stop: threading.Event) -> None:
        repair_tail(outputs)
        present = {t.key for t in read_jsonl(outputs, Trace)} if outputs.exists() else set()
        rows = [(p, k) for p in problems for k in range(s.n) if (p.id, name, k) not in present]
        with _progress(show_progress) as bar:
            task = bar.add_task(name, total=len(rows))
            for start in range(0, len(rows), batch_size):
                if stop.is_set():
                    return
                chunk = rows[start : start + batch_size]
                requests = [
                    (
                        [{"role": "user", "content": p.question}],
                        SamplingParams(
                            s.temperature, s.top_p, s.max_tokens, request_seed(s.seed, p.id, 0) + k
                        ),
                    )
                    for p, k in chunk
                ]
                t0 = time.perf_counter()
                outs = lm.complete(requests)
                latency = time.perf_counter() - t0
                traces = [
                    Trace(
                        problem_id=p.id,
                        teacher=name,
                        model=name,
                        sample=k,
                        temperature=s.temperature,
                        reasoning=c.reasoning,
                        answer=c.content,
                        prompt_tokens=c.prompt_tokens,
                        completion_tokens=c.completion_tokens,
                        finish_reason=c.finish_reason,
                        latency_s=latency,
                    )
                    for (p, k), c in zip(chunk, outs, strict=True)
                ]
                append_jsonl(outputs, traces)
                bar.advance(task, len(chunk))

    # A tokenizer of its own: the decoding thread uses the model's, and a Rust tokenizer shared across threads can
    # fail with "Already borrowed".
    return name, generate, _tokenizer_counter(AutoTokenizer.from_pretrained(lm.path))


def _tokenizer_counter(tokenizer: Any) -> Counter:
    def count(trace: Trace) -> int:
        if is_truncated(trace):
            return trace.completion_tokens
        return len(tokenizer(trace.reasoning)["input_ids"]) if trace.reasoning else 0

    return count


def _progress(show: bool) -> Progress:
    return Progress(
        TextColumn("[bold]eval {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not show,
        transient=True,
    )


@contextlib.contextmanager
def _served(
    model_dir: Path, model_name: str | None, n: int, batch_size: int
) -> Iterator[tuple[TeacherConfig, Counter]]:
    """Serve the checkpoint on 127.0.0.1 for the block; yield its client config and its tokenizer's counter."""
    from transformers import AutoTokenizer

    from branchmerge.teachers.local import check_model_dir
    from branchmerge.teachers.serve import running_server

    path = check_model_dir(model_dir)
    name = model_name or path.name
    in_flight = max(1, math.ceil(2 * batch_size / n))  # one batch decoding, the next one queued
    with running_server(
        path,
        model_name=name,
        max_batch=batch_size,
        batch_wait_s=SERVE_BATCH_WAIT_S,
        max_queue=max(256, (in_flight + 1) * n),
    ) as url:
        # No retries, no practical timeout: a local server's failure will not mend by asking again, and on a
        # CPU a queued request can wait minutes for the batch ahead of it.
        config = TeacherConfig(
            name=name, base_url=url, model=name, max_concurrency=in_flight, timeout_s=86400, max_retries=0
        )
        yield config, _tokenizer_counter(AutoTokenizer.from_pretrained(path))
