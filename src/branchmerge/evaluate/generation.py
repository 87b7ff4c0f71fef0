"""Make a model's completions for an evaluation, and count their reasoning tokens.

Each way of running a model is a `Generate`: it writes one Trace per (problem, sample) to the outputs file,
asks only for keys not already there, and stops early once its `stop` event is set.
- An endpoint (`endpoint_generate`): the teachers client (bounded concurrency, rate limits, retries).
- A local checkpoint decoded in-process (`in_process`, the default): the same seeds and Trace records a server
  would give.
- A local checkpoint served on 127.0.0.1 (`served`) by `teachers.engines.serve_checkpoint` (the built-in
  server, or vLLM), then asked through
  the client like any endpoint. Measured on the quick demo's evaluation (60 items, greedy, 200 max tokens, one
  torch thread, 2 shared cores; median seconds per model over 3 checkpoints x 3 runs, in two sessions; the same
  passes every way): in-process 1.30 / 0.93, served 2.03 / 1.39, the former in-process loop 1.56 / 0.95.
  Serving costs a fixed 0.5-0.7 s per model (HTTP for every request, the server's start and shutdown tick):
  about 5 s over the demo's nine evaluations, nothing on a long run.

`reasoning_tokens` (a `Counter`): for a local checkpoint, the reasoning text counted with the model's tokenizer.
For an endpoint, an estimate: the completion tokens the server counted minus the answer's estimated tokens (4
characters per token), when there is reasoning text or the server counted more than twice the answer's estimate
(reasoning the API did not return, as hosted reasoning models do); otherwise 0. A truncated completion is all
reasoning.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from branchmerge import runtime
from branchmerge.records import Problem, Trace, append_jsonl, read_jsonl
from branchmerge.records.repair import repair_tail
from branchmerge.teachers.client import agenerate, request_seed
from branchmerge.teachers.config import TeacherConfig

STOP_POLL_S = 0.1  # how often requests in flight check whether they should stop
SERVE_BATCH_WAIT_S = 0.05  # a served local model waits this long for its batch to fill
# Rows a local checkpoint decodes together by default. The demo's evaluation of a tiny model (1,200 items, greedy,
# 200 max tokens, one thread) took the least CPU at 256: fewer, fuller steps than at 64 or 128, while one batch
# of all 1,200 rows spends its last steps on a few long answers.
DEFAULT_BATCH = 256

Counter = Callable[[Trace], int]  # reasoning tokens of a completion
Generate = Callable[[list[Problem], Path, threading.Event], None]  # (problems, outputs file, stop) -> None


@dataclass(frozen=True)
class Sampling:
    n: int
    temperature: float
    top_p: float
    max_tokens: int
    seed: int


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


def endpoint_generate(endpoint: TeacherConfig, s: Sampling, show_progress: bool) -> Generate:
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
        finished, _ = await asyncio.wait({task}, timeout=STOP_POLL_S)
        if finished:
            task.result()
            return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def in_process(
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
        # Similar prompts together: a batch pads its prompts less, and its rows tend to finish together.
        rows.sort(key=lambda row: len(row[0].question))
        params = sum(int(p.numel()) for p in lm.model.parameters())
        with _progress(show_progress) as bar, runtime.using("eval", params=params):
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
def served(
    model_dir: Path, model_name: str | None, n: int, batch_size: int, engine: str = "builtin"
) -> Iterator[tuple[TeacherConfig, Counter]]:
    """Serve the checkpoint on 127.0.0.1 with `engine` (see `teachers.engines`) for the block; yield its client
    config and its tokenizer's counter."""
    from transformers import AutoTokenizer

    from branchmerge.teachers.engines import serve_checkpoint
    from branchmerge.teachers.local import check_model_dir

    path = check_model_dir(model_dir)
    name = model_name or path.name
    in_flight = max(1, math.ceil(2 * batch_size / n))  # one batch decoding, the next one queued
    with serve_checkpoint(
        path,
        engine=engine,
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
