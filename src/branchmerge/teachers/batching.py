"""Dynamic batching for the server: concurrent requests are queued row by row and decoded together.

A request with `n=4` is four rows. One worker thread takes up to `max_batch` pending rows, waiting at most
`batch_wait_s` for more once the first arrives, runs the model once for all of them, and resolves each
request's future. While a batch runs, new requests pile up and form the next batch, so throughput grows with
load without delaying a lone request by more than `batch_wait_s`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Protocol

from branchmerge.teachers.local import Completion, SamplingParams

Messages = list[dict[str, str]]
Row = tuple[Messages, SamplingParams]


class CompletionModel(Protocol):
    """What the server needs from a model; `LocalModel` is one, a test fake is another."""

    name: str

    def prompt_ids(self, messages: Messages) -> list[int]: ...

    def complete(self, requests: list[Row]) -> list[Completion]: ...


class QueueFullError(Exception):
    """More rows are waiting than the server accepts; the client should retry later (HTTP 503)."""


@dataclass
class BatchStats:
    """Counters a test or `/health` reads to see that concurrent requests shared batches."""

    requests: int = 0
    rows: int = 0
    batches: int = 0
    largest_batch: int = 0
    busy_s: float = 0.0


@dataclass
class _Job:
    rows: list[Row]
    future: Future[list[Completion]]
    results: list[Completion | None]
    remaining: int


class Batcher:
    """A row queue drained by one worker thread that calls `complete` once per batch."""

    def __init__(
        self,
        complete: Callable[[list[Row]], list[Completion]],
        *,
        max_batch: int = 32,
        batch_wait_s: float = 0.01,
        max_queue: int = 256,
    ) -> None:
        self._complete = complete
        self.max_batch, self.batch_wait_s, self.max_queue = max_batch, batch_wait_s, max_queue
        self.stats = BatchStats()
        self._pending: deque[tuple[_Job, int]] = deque()  # (job, row index in the job)
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def queued_rows(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        """Start the worker (idempotent)."""
        with self._cond:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._loop, name="branchmerge-batcher", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Finish the running batch, fail every queued request, and join the worker."""
        with self._cond:
            self._stopping = True
            dropped = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        for job, _ in dropped:
            _settle(job.future, error=RuntimeError("server is shutting down"))
        if thread is not None:
            thread.join()

    def submit(self, rows: list[Row]) -> Future[list[Completion]]:
        """Queue a request's rows; the future resolves to their completions in order."""
        self.start()
        job = _Job(rows, Future(), [None] * len(rows), len(rows))
        with self._cond:
            if len(self._pending) + len(rows) > self.max_queue:
                raise QueueFullError(f"{len(self._pending)} rows queued (limit {self.max_queue})")
            self._pending.extend((job, i) for i in range(len(rows)))
            self.stats.requests += 1
            self._cond.notify_all()
        return job.future

    def _take(self) -> list[tuple[_Job, int]] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            deadline = time.monotonic() + self.batch_wait_s
            while len(self._pending) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            take = min(self.max_batch, len(self._pending))
            batch = [self._pending.popleft() for _ in range(take)]
        return [(job, i) for job, i in batch if not job.future.cancelled()]  # the client went away

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            if batch:
                self._run(batch)

    def _run(self, batch: list[tuple[_Job, int]]) -> None:
        t0 = time.perf_counter()
        try:
            outs = self._complete([job.rows[i] for job, i in batch])
        except Exception as e:  # a model failure fails this batch's requests, not the server
            for job, _ in batch:
                _settle(job.future, error=e)
            return
        finally:
            self.stats.batches += 1
            self.stats.rows += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            self.stats.busy_s += time.perf_counter() - t0
        for (job, i), out in zip(batch, outs, strict=True):
            job.results[i] = out
            job.remaining -= 1
            if job.remaining == 0:
                _settle(job.future, result=[r for r in job.results if r is not None])


def _settle(
    future: Future[list[Completion]], result: list[Completion] | None = None, error: Exception | None = None
) -> None:
    """Resolve a future unless its request was cancelled meanwhile (the event loop may cancel at any time)."""
    with contextlib.suppress(InvalidStateError):
        if error is not None:
            future.set_exception(error)
        elif result is not None:
            future.set_result(result)
