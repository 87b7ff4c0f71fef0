"""Grade an evaluation's completions as they arrive, resumably: the loop behind `evaluate_model`.

Generation runs in a background thread and appends Traces to `outputs_path(OUT)`; this thread reads that file
as it grows and grades what is new in chunks, appending EvalSamples to `OUT`, so grading overlaps generation.
`OUT` is the run's state: a rerun grades only the (item, sample) pairs of this model not yet in it, and
generation asks only for the completions not yet in the outputs file (failed requests, error traces, are
dropped first and asked again).

Grading sees the answer without the reasoning (`Trace.answer`, the text after the last `</think>`). A completion
stopped by the token limit with no answer, or with no reasoning part at all (Qwen3 thinking templates put
`<think>` in the prompt, so a completion cut mid-thought has no tags and would otherwise read as all answer),
fails with detail "truncated" without reaching the grader; `truncation_rate` gives the share. Everything else goes
to `graders.grade_many` (a process pool over all cores; judge items go to the judge in effect).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from branchmerge.errors import BranchmergeError
from branchmerge.evaluate.generation import Counter, Generate, Sampling, is_truncated
from branchmerge.graders import Grade, grade_many
from branchmerge.records import EvalSample, Problem, Trace, append_jsonl, read_jsonl, write_jsonl
from branchmerge.records.repair import drop_error_traces, repair_tail

TRUNCATED = "truncated"
POLL_S = 0.1  # how often the grader looks for new completions
FLUSH_S = 2.0  # a partial chunk is graded once its oldest completion has waited this long


def outputs_path(out_path: str | Path) -> Path:
    """Where the raw completions of `out_path`'s run go: its stem + `.outputs.jsonl`."""
    out = Path(out_path)
    return out.with_name(f"{out.stem}.outputs.jsonl")


def truncation_rate(samples: Sequence[EvalSample]) -> float:
    """The share of samples cut off by the token limit before they gave an answer."""
    return sum(s.detail == TRUNCATED for s in samples) / len(samples) if samples else 0.0


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


def generate_and_grade(
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
    """Generate what `out` lacks of model `name` on `problems` in the background, grading it as it arrives;
    return the model's samples of these problems in problem order (`evaluate_model` documents the rest)."""
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
