"""`branchmerge generate` as a library: ask an OpenAI-compatible teacher for traces, append them, resume.

Each problem is asked `n` times at each temperature: one request per (problem, temperature) carrying `n`.
Sample index = temperature_index * n + j, so the Trace key (problem_id, teacher, sample) is unique and the same
request always produces the same keys; that is what makes resume exact. With a `seed`, each request's seed is
derived from (seed, problem id, temperature index) by hashing, so a re-run asks for the same samples.

Transient failures (429, 5xx, timeouts, dropped connections) are retried with exponential backoff and jitter,
honouring Retry-After. Anything else, and retries that run out, become Traces with `error` set: a long run never
stops on one bad request, and the errors are counted and kept for inspection (and, later, a retry pass).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field, ValidationError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, Trace, append_jsonl, read_jsonl
from branchmerge.records.repair import drop_error_traces, repair_tail
from branchmerge.teachers.config import TeacherConfig, validate_teachers
from branchmerge.teachers.pool import EndpointPool
from branchmerge.teachers.thinking import split_reasoning

MAX_RETRY_AFTER_S = 600.0  # a server asking for longer is treated as asking for this long


class TeacherStats(BaseModel):
    """One teacher's share of a run. Token counts are what the server billed (`usage`)."""

    requests: int = 0  # requests sent this run (retries not counted)
    skipped: int = 0  # requests whose every key was already in the file
    traces: int = 0  # traces written this run, errors included
    errors: int = 0  # error traces written this run
    truncated: int = 0  # traces that stopped at max_tokens (finish_reason "length")
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    answered: int = 0  # requests that got an answer
    latency_s: float = 0.0  # summed over answered requests
    cost_usd: float | None = None  # at the teacher's prices, when given

    @property
    def mean_latency_s(self) -> float:
        return self.latency_s / self.answered if self.answered else 0.0


class GenerateSummary(BaseModel):
    """What one `generate` run did: totals, and `teachers` per teacher name."""

    out_path: str
    requests: int = 0
    skipped: int = 0
    traces: int = 0
    errors: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retried_errors: int = 0  # error traces removed by --retry-errors so their keys are asked again
    wall_s: float = 0.0
    teachers: dict[str, TeacherStats] = Field(default_factory=dict)

    def total(self) -> None:
        """Fill the totals from the per-teacher stats."""
        for key in (
            "requests",
            "skipped",
            "traces",
            "errors",
            "retries",
            "prompt_tokens",
            "completion_tokens",
        ):
            setattr(self, key, sum(getattr(t, key) for t in self.teachers.values()))


@dataclass(frozen=True)
class _Job:
    problem: Problem
    temperature_index: int
    temperature: float
    samples: list[int]  # every key's sample index for this request
    seed: int | None


class _Failed(Exception):
    """A request that will not succeed: a non-transient answer or retries used up."""


class _Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def request_seed(seed: int, problem_id: str, temperature_index: int) -> int:
    """A seed per request, stable across runs and machines (Python's `hash` is salted per process)."""
    digest = hashlib.sha256(f"{seed}\x00{problem_id}\x00{temperature_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1  # 31 bits: every server accepts it, and seed + j still fits


def _plan(
    problems: Sequence[Problem], n: int, temperatures: Sequence[float], seed: int | None
) -> Iterator[_Job]:
    for problem in problems:
        for ti, temperature in enumerate(temperatures):
            yield _Job(
                problem=problem,
                temperature_index=ti,
                temperature=temperature,
                samples=[ti * n + j for j in range(n)],
                seed=None if seed is None else request_seed(seed, problem.id, ti),
            )


def _check_inputs(
    problems: Sequence[Problem], n: int, temperatures: Sequence[float], top_p: float, max_tokens: int
) -> None:
    if n < 1:
        raise BranchmergeError(f"n must be at least 1 (got {n})")
    if not temperatures:
        raise BranchmergeError("temperatures must list at least one temperature")
    if any(t < 0 for t in temperatures):
        raise BranchmergeError(f"temperatures must be >= 0 (got {list(temperatures)})")
    if not 0 < top_p <= 1:
        raise BranchmergeError(f"top_p must be in (0, 1] (got {top_p})")
    if max_tokens < 1:
        raise BranchmergeError(f"max_tokens must be at least 1 (got {max_tokens})")
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise BranchmergeError(f"problem id '{p.id}' appears more than once; ids must be unique")
        seen.add(p.id)


# --------------------------------------------------------------------------------------------- HTTP


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:  # the HTTP-date form
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("error", body)
    except (ValueError, AttributeError, KeyError, TypeError):
        message = response.text
    return f"HTTP {response.status_code}: {str(message)[:500]}"


async def _post_once(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        response = await client.post(url, json=body)
    except httpx.TimeoutException as e:
        raise _Transient(f"timed out ({type(e).__name__})") from None
    except httpx.TransportError as e:
        raise _Transient(f"connection failed ({type(e).__name__}: {e})") from None
    except httpx.HTTPError as e:  # e.g. an undecodable body: asking again will not help
        raise _Failed(f"request failed ({type(e).__name__}: {e})") from None
    if response.status_code == 429 or response.status_code >= 500:
        raise _Transient(_error_text(response), _retry_after(response))
    if response.status_code >= 400:
        raise _Failed(_error_text(response))
    try:
        data = response.json()
    except ValueError:
        raise _Failed(f"HTTP {response.status_code}: response is not JSON: {response.text[:200]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise _Failed(f"response has no 'choices' list: {str(data)[:200]}")
    return data


async def _post(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], teacher: TeacherConfig, stats: TeacherStats
) -> tuple[dict[str, Any], float]:
    """POST with retries (counted in `stats.retries`); returns (response JSON, latency of the attempt that
    succeeded)."""
    for attempt in range(teacher.max_retries + 1):
        t0 = time.perf_counter()
        try:
            return await _post_once(client, url, body), time.perf_counter() - t0
        except _Transient as e:
            if attempt == teacher.max_retries:
                raise _Failed(f"gave up after {attempt + 1} attempt(s); last: {e}") from None
            # Full jitter keeps many clients from retrying in lockstep against one recovering server.
            delay = (
                e.retry_after
                if e.retry_after is not None
                else teacher.backoff_s * 2**attempt * random.random()
            )
            stats.retries += 1
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------- parsing


def parse_choice(message: dict[str, Any]) -> tuple[str, str]:
    """(reasoning, answer) from a chat message.

    R1-style APIs put the reasoning in `reasoning_content` (vLLM, DeepSeek) or `reasoning` (some gateways);
    otherwise it may be inline in `<think>` tags in the content (Qwen3 templates, raw servers).
    """
    content = message.get("content") or ""
    for field in ("reasoning_content", "reasoning"):
        reasoning = message.get(field)
        if isinstance(reasoning, str) and reasoning:
            return reasoning.strip(), content.strip()
    reasoning, answer, _closed = split_reasoning(content)
    return reasoning, answer


def _traces(job: _Job, teacher: TeacherConfig, data: dict[str, Any], latency_s: float) -> list[Trace]:
    """One Trace per requested sample. Per-choice `completion_tokens` (our server sends them) are used when
    present; otherwise `usage.completion_tokens` is divided evenly over the choices and rounded, which is exact
    on average but not per sample. `prompt_tokens` is the request's prompt size, the same for every sample."""
    choices = [c for c in data["choices"] if isinstance(c, dict)]
    usage = data.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    share = round(int(usage.get("completion_tokens") or 0) / max(len(choices), 1))
    by_index = {int(c.get("index", j)): c for j, c in enumerate(choices)}
    model = str(data.get("model") or teacher.model)
    out = []
    for j, sample in enumerate(job.samples):
        base: dict[str, Any] = {
            "problem_id": job.problem.id,
            "teacher": teacher.name,
            "model": model,
            "sample": sample,
            "temperature": job.temperature,
            "latency_s": latency_s,
        }
        choice = by_index.get(j)
        if choice is None:
            out.append(Trace(**base, error=f"server returned {len(choices)} of {len(job.samples)} choices"))
            continue
        reasoning, answer = parse_choice(choice.get("message") or {})
        tokens = choice.get("completion_tokens")
        out.append(
            Trace(
                **base,
                reasoning=reasoning,
                answer=answer,
                prompt_tokens=prompt_tokens,
                completion_tokens=int(tokens) if isinstance(tokens, int) else share,
                finish_reason=choice.get("finish_reason"),
            )
        )
    return out


def _error_traces(job: _Job, teacher: TeacherConfig, error: str) -> list[Trace]:
    return [
        Trace(
            problem_id=job.problem.id,
            teacher=teacher.name,
            model=teacher.model,
            sample=s,
            temperature=job.temperature,
            error=error,
        )
        for s in job.samples
    ]


# --------------------------------------------------------------------------------------------- the run


def _existing_keys(out_path: Path) -> set[tuple[str, str, int]]:
    repair_tail(out_path)
    if not out_path.exists():
        return set()
    return {t.key for t in read_jsonl(out_path, Trace)}


def _progress(show: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rps]:.1f} req/s {task.fields[tps]:,.0f} tok/s errors {task.fields[errors]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not show,
    )


@dataclass
class _Run:
    """One teacher's part of a run: its pool, its pending jobs and its stats."""

    teacher: TeacherConfig
    pool: EndpointPool
    todo: list[_Job]
    stats: TeacherStats


async def _ask(client: httpx.AsyncClient, run: _Run, job: _Job, sampling: dict[str, Any]) -> list[Trace]:
    """One request's traces: the answers, or one error trace per sample when the request failed."""
    teacher, stats = run.teacher, run.stats
    body = {
        "model": teacher.model,
        "messages": [{"role": "user", "content": job.problem.question}],
        "temperature": job.temperature,
        **sampling,
        **teacher.extra_body,
    }
    if job.seed is not None:
        body["seed"] = job.seed
    stats.requests += 1
    reserved = estimate_prompt_tokens(job.problem.question) + sampling["max_tokens"] * len(job.samples)
    endpoint = await run.pool.acquire(reserved)
    used: float | None = None
    try:
        data, latency_s = await _post(client, endpoint.url, body, teacher, stats)
        usage = data.get("usage") or {}
        used = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
    except _Failed as e:
        await run.pool.release(endpoint, ok=False, reserved=reserved)
        return _error_traces(job, teacher, str(e))
    await run.pool.release(endpoint, ok=True, reserved=reserved, used=used)
    try:
        traces = _traces(job, teacher, data, latency_s)
        stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        stats.completion_tokens += int(usage.get("completion_tokens") or 0)
    except (ValueError, TypeError, AttributeError, ValidationError) as e:  # a malformed choice or usage
        return _error_traces(job, teacher, f"unexpected response shape ({type(e).__name__}: {e})"[:500])
    stats.answered += 1
    stats.latency_s += latency_s
    return traces


def _pending(
    problems: Sequence[Problem],
    teacher: TeacherConfig,
    present: set[tuple[str, str, int]],
    n: int,
    temperatures: Sequence[float],
    seed: int | None,
) -> tuple[list[_Job], int]:
    """(jobs with at least one key missing from the file, number of jobs already complete)."""
    todo, skipped = [], 0
    for job in _plan(problems, n, temperatures, seed):
        if all((job.problem.id, teacher.name, s) in present for s in job.samples):
            skipped += 1
        else:
            todo.append(job)
    return todo, skipped


async def agenerate(
    problems: Iterable[Problem],
    teachers: TeacherConfig | Sequence[TeacherConfig],
    out_path: str | Path,
    *,
    n: int = 1,
    temperatures: Sequence[float] = (0.6,),
    top_p: float = 0.95,
    max_tokens: int = 512,
    seed: int | None = None,
    retry_errors: bool = False,
    show_progress: bool = True,
) -> GenerateSummary:
    """Generate `n` traces per problem at each temperature from every teacher into `out_path` (JSONL,
    appended as requests complete, resumable).

    Requests whose every key is already in the file are skipped (error traces count as present unless
    `retry_errors`, which first removes them so exactly the failed keys are asked again). Each teacher
    sends through its own endpoint pool (`pool.py`): `max_concurrency` requests per endpoint, its rate limits,
    failing endpoints paused. All teachers run at once.
    """
    problems = list(problems)
    _check_inputs(problems, n, temperatures, top_p, max_tokens)
    configs = validate_teachers(teachers)
    headers = {t.name: t.headers() for t in configs}  # a missing key variable fails here, before any request
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    summary = GenerateSummary(out_path=str(out))
    if retry_errors:
        summary.retried_errors = drop_error_traces(out, {t.name for t in configs})
    present = _existing_keys(out)
    runs = []
    for teacher in configs:
        todo, skipped = _pending(problems, teacher, present, n, temperatures, seed)
        pool = EndpointPool(
            teacher.urls,
            teacher.max_concurrency,
            requests_per_min=teacher.requests_per_min,
            tokens_per_min=teacher.tokens_per_min,
            pause_after=teacher.pause_after,
            pause_s=teacher.pause_s,
        )
        summary.teachers[teacher.name] = TeacherStats(skipped=skipped)
        runs.append(_Run(teacher, pool, todo, summary.teachers[teacher.name]))
    sampling = {"n": n, "top_p": top_p, "max_tokens": max_tokens}

    with _progress(show_progress) as progress:

        async def drive(run: _Run) -> None:
            task = progress.add_task(
                f"generate {run.teacher.name}", total=len(run.todo), errors=0, rps=0, tps=0
            )
            queue = iter(run.todo)  # workers pull from one iterator: the pool bounds what is in flight
            start = time.perf_counter()

            async def worker(client: httpx.AsyncClient) -> None:
                for job in queue:
                    traces = await _ask(client, run, job, sampling)
                    new = [
                        t for t in traces if t.key not in present
                    ]  # a partly written request keeps its lines
                    append_jsonl(out, new)  # flushed now: a crash loses at most the requests in flight
                    present.update(t.key for t in new)
                    stats = run.stats
                    stats.traces += len(new)
                    stats.errors += sum(t.error is not None for t in new)
                    stats.truncated += sum(t.finish_reason == "length" for t in new)
                    elapsed = max(time.perf_counter() - start, 1e-9)
                    progress.update(
                        task,
                        advance=1,
                        errors=stats.errors,
                        rps=(stats.requests) / elapsed,
                        tps=(stats.prompt_tokens + stats.completion_tokens) / elapsed,
                    )

            limits = httpx.Limits(
                max_connections=run.pool.capacity, max_keepalive_connections=run.pool.capacity
            )
            async with httpx.AsyncClient(
                headers=headers[run.teacher.name], timeout=run.teacher.timeout_s, limits=limits
            ) as client:
                await asyncio.gather(*(worker(client) for _ in range(min(run.pool.capacity, len(run.todo)))))
            run.stats.cost_usd = run.teacher.cost(run.stats.prompt_tokens, run.stats.completion_tokens)

        await asyncio.gather(*(drive(run) for run in runs))

    summary.total()
    summary.wall_s = time.perf_counter() - t_start
    return summary


# --------------------------------------------------------------------------------------------- dry run


def estimate_prompt_tokens(text: str) -> int:
    """A tokenizer-free estimate: about 4 characters per token for English and code (plus the chat
    template's few tokens). Good to ~20% for budgeting; the real count comes back in `usage`."""
    return len(text) // 4 + 8


class TeacherPlan(BaseModel):
    requests: int  # to send
    samples: int  # traces they will write
    skipped: int  # requests already complete in the file
    prompt_tokens: int  # estimated
    completion_tokens_max: int  # upper bound: max_tokens per sample
    cost_usd_max: float | None  # at the teacher's prices, completion at its upper bound


def plan_generation(
    problems: Iterable[Problem],
    teachers: TeacherConfig | Sequence[TeacherConfig],
    out_path: str | Path,
    *,
    n: int = 1,
    temperatures: Sequence[float] = (0.6,),
    max_tokens: int = 512,
    seed: int | None = None,
    retry_errors: bool = False,
) -> dict[str, TeacherPlan]:
    """What `agenerate` with these arguments would send, per teacher, without sending anything or touching
    the file (error traces are counted as pending when `retry_errors`)."""
    problems = list(problems)
    _check_inputs(problems, n, temperatures, 0.5, max_tokens)
    configs = validate_teachers(teachers)
    out = Path(out_path)
    traces = read_jsonl(out, Trace) if out.exists() else []
    present = {t.key for t in traces if not (retry_errors and t.error is not None)}
    plans = {}
    for teacher in configs:
        todo, skipped = _pending(problems, teacher, present, n, temperatures, seed)
        prompt = sum(estimate_prompt_tokens(job.problem.question) for job in todo)
        samples = sum(len(job.samples) for job in todo)
        completion = max_tokens * samples
        plans[teacher.name] = TeacherPlan(
            requests=len(todo),
            samples=samples,
            skipped=skipped,
            prompt_tokens=prompt,
            completion_tokens_max=completion,
            cost_usd_max=teacher.cost(prompt, completion),
        )
    return plans


def generate_traces(
    problems: Iterable[Problem],
    teachers: TeacherConfig | Sequence[TeacherConfig],
    out_path: str | Path,
    *,
    n: int = 1,
    temperatures: Sequence[float] = (0.6,),
    top_p: float = 0.95,
    max_tokens: int = 512,
    seed: int | None = None,
    retry_errors: bool = False,
    show_progress: bool = True,
) -> GenerateSummary:
    """Synchronous `agenerate` for scripts and the CLI (it starts its own event loop)."""
    return asyncio.run(
        agenerate(
            problems,
            teachers,
            out_path,
            n=n,
            temperatures=temperatures,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            retry_errors=retry_errors,
            show_progress=show_progress,
        )
    )
