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
import json
import os
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, Trace, append_jsonl, read_jsonl
from branchmerge.teachers.thinking import split_reasoning

# Body fields the client sets itself; letting `extra_body` override them would break sample keys or records.
_RESERVED = frozenset({"model", "messages", "n", "seed", "stream", "temperature", "top_p", "max_tokens"})
MAX_RETRY_AFTER_S = 600.0  # a server asking for longer is treated as asking for this long


class TeacherConfig(BaseModel):
    """One OpenAI-compatible endpoint and how hard to push it."""

    model_config = ConfigDict(extra="forbid")

    name: str  # the `teacher` field of every Trace; part of the key
    base_url: str  # e.g. "http://127.0.0.1:8000/v1"
    model: str
    api_key_env: str | None = None  # name of the environment variable holding the key, never the key itself
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff_s: float = Field(1.0, ge=0)  # first retry waits about this long, doubling each time
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"'{v}' is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
        return v

    @field_validator("extra_body")
    @classmethod
    def _no_reserved(cls, v: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(_RESERVED & v.keys())
        if clash:
            raise ValueError(f"{clash} are set by generate itself; use its options instead")
        return v

    def headers(self) -> dict[str, str]:
        """Request headers; a named but unset key variable is an error here, before any request is sent."""
        if self.api_key_env is None:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise BranchmergeError(
                f"teacher '{self.name}': environment variable {self.api_key_env} is not set (it should hold the API key)"
            )
        return {"Authorization": f"Bearer {key}"}


class GenerateSummary(BaseModel):
    """What one `generate` run did. Token counts are what the server billed (`usage`) this run."""

    out_path: str
    requests: int = 0  # requests sent this run (retries not counted)
    skipped: int = 0  # requests whose every key was already in the file
    traces: int = 0  # traces written this run, errors included
    errors: int = 0  # error traces written this run
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0


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


def repair_tail(path: Path) -> None:
    """Make the file end at a line boundary, so appended lines never glue onto a torn one.

    A last line without a newline is kept (and terminated) if it is valid JSON, exactly as `read_jsonl` keeps
    it; otherwise it is a crash mid-write and is cut off, exactly as `read_jsonl` drops it.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        start = size
        while start > 0:  # scan backwards for the last newline, 64 KiB at a time
            step = min(65536, start)
            f.seek(start - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                start = start - step + nl + 1
                break
            start -= step
        if start == size:
            return
        f.seek(start)
        tail = f.read()
        try:
            json.loads(tail)
        except ValueError:
            f.truncate(start)
        else:
            f.write(b"\n")


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
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    teacher: TeacherConfig,
    summary: GenerateSummary,
) -> tuple[dict[str, Any], float]:
    """POST with retries; returns (response JSON, latency of the attempt that succeeded)."""
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
            summary.retries += 1
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


def _existing_keys(out_path: Path, teacher: str) -> set[tuple[str, str, int]]:
    repair_tail(out_path)
    if not out_path.exists():
        return set()
    return {t.key for t in read_jsonl(out_path, Trace) if t.teacher == teacher}


def _progress(show: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("errors {task.fields[errors]}"),
        TimeElapsedColumn(),
        disable=not show,
    )


async def _ask(
    client: httpx.AsyncClient,
    url: str,
    job: _Job,
    sampling: dict[str, Any],
    teacher: TeacherConfig,
    summary: GenerateSummary,
) -> list[Trace]:
    """One request's traces: the answers, or one error trace per sample when the request failed."""
    body = {
        "model": teacher.model,
        "messages": [{"role": "user", "content": job.problem.question}],
        "temperature": job.temperature,
        **sampling,
        **teacher.extra_body,
    }
    if job.seed is not None:
        body["seed"] = job.seed
    summary.requests += 1
    try:
        data, latency_s = await _post(client, url, body, teacher, summary)
    except _Failed as e:
        return _error_traces(job, teacher, str(e))
    try:
        traces = _traces(job, teacher, data, latency_s)
        usage = data.get("usage") or {}
        summary.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        summary.completion_tokens += int(usage.get("completion_tokens") or 0)
    except (ValueError, TypeError, AttributeError, ValidationError) as e:  # a malformed choice or usage
        return _error_traces(job, teacher, f"unexpected response shape ({type(e).__name__}: {e})"[:500])
    return traces


async def agenerate(
    problems: Iterable[Problem],
    teacher: TeacherConfig,
    out_path: str | Path,
    *,
    n: int = 1,
    temperatures: Sequence[float] = (0.6,),
    top_p: float = 0.95,
    max_tokens: int = 512,
    seed: int | None = None,
    show_progress: bool = True,
) -> GenerateSummary:
    """Generate `n` traces per problem at each temperature into `out_path` (JSONL, appended, resumable).

    Requests whose every key is already in the file are skipped (error traces count as present).
    Concurrency is bounded by `teacher.max_concurrency` workers sharing one connection pool.
    """
    problems = list(problems)
    _check_inputs(problems, n, temperatures, top_p, max_tokens)
    headers = teacher.headers()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    summary = GenerateSummary(out_path=str(out))
    present = _existing_keys(out, teacher.name)

    todo: list[_Job] = []
    for job in _plan(problems, n, temperatures, seed):
        if all((job.problem.id, teacher.name, s) in present for s in job.samples):
            summary.skipped += 1
        else:
            todo.append(job)

    url = teacher.base_url.rstrip("/") + "/chat/completions"
    limits = httpx.Limits(
        max_connections=teacher.max_concurrency, max_keepalive_connections=teacher.max_concurrency
    )
    sampling = {"n": n, "top_p": top_p, "max_tokens": max_tokens}
    queue = iter(todo)  # workers pull from one iterator: at most max_concurrency requests in flight

    with _progress(show_progress) as progress:
        task = progress.add_task(f"generate {teacher.name}", total=len(todo), errors=0)

        async def worker(client: httpx.AsyncClient) -> None:
            for job in queue:
                traces = await _ask(client, url, job, sampling, teacher, summary)
                new = [t for t in traces if t.key not in present]  # a partly written request keeps its lines
                append_jsonl(out, new)  # flushed now: a crash loses at most the requests in flight
                present.update(t.key for t in new)
                summary.traces += len(new)
                summary.errors += sum(t.error is not None for t in new)
                progress.update(task, advance=1, errors=summary.errors)

        async with httpx.AsyncClient(headers=headers, timeout=teacher.timeout_s, limits=limits) as client:
            await asyncio.gather(*(worker(client) for _ in range(min(teacher.max_concurrency, len(todo)))))

    summary.wall_s = time.perf_counter() - t_start
    return summary


def generate_traces(
    problems: Iterable[Problem],
    teacher: TeacherConfig,
    out_path: str | Path,
    *,
    n: int = 1,
    temperatures: Sequence[float] = (0.6,),
    top_p: float = 0.95,
    max_tokens: int = 512,
    seed: int | None = None,
    show_progress: bool = True,
) -> GenerateSummary:
    """Synchronous `agenerate` for scripts and the CLI (it starts its own event loop)."""
    return asyncio.run(
        agenerate(
            problems,
            teacher,
            out_path,
            n=n,
            temperatures=temperatures,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            show_progress=show_progress,
        )
    )
