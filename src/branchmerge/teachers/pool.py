"""An endpoint pool for one teacher: several OpenAI-compatible servers, rate limits, and failing servers paused.

Each request asks the pool for an endpoint. The pool answers with the least-loaded healthy one (fewest
requests in flight relative to its concurrency limit) that has room under its limits, waiting when none has.
A server that fails `pause_after` requests in a row (after their retries) is paused for `pause_s` seconds
and then tried again; a success resets its count. Rate limits (requests/min, tokens/min) are token buckets
shared by the whole teacher, since providers meter per API key, not per connection.

Token costs are not known until the answer arrives, so a request reserves an estimate (its prompt plus
`max_tokens` per sample) and the bucket is corrected by the real usage when it completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """`per_minute` units refilled continuously; `take` waits until the amount is there. The balance may go
    negative after a correction, which makes later takers wait longer, as the provider would."""

    per_minute: float
    level: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.level = self.per_minute
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.per_minute, self.level + (now - self.stamp) * self.per_minute / 60)
        self.stamp = now

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` is available (0 when it is now). An amount above the capacity waits for a
        full bucket, so one huge request is throttled but never stuck."""
        self._refill()
        need = min(amount, self.per_minute) - self.level
        return max(0.0, need * 60 / self.per_minute)

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount

    def give_back(self, amount: float) -> None:
        self._refill()
        self.level = min(self.per_minute, self.level + amount)


@dataclass
class Endpoint:
    url: str  # .../chat/completions
    limit: int  # concurrency limit
    in_flight: int = 0
    failures: int = 0  # consecutive failed requests
    paused_until: float = 0.0
    requests: int = 0
    errors: int = 0

    @property
    def load(self) -> float:
        return self.in_flight / self.limit


class EndpointPool:
    """Hands out endpoints under concurrency, health and rate limits (see the module docstring)."""

    def __init__(
        self,
        base_urls: list[str],
        max_concurrency: int,
        *,
        requests_per_min: float | None = None,
        tokens_per_min: float | None = None,
        pause_after: int = 5,
        pause_s: float = 30.0,
    ):
        self.endpoints = [
            Endpoint(url.rstrip("/") + "/chat/completions", max_concurrency) for url in base_urls
        ]
        self.requests = TokenBucket(requests_per_min) if requests_per_min else None
        self.tokens = TokenBucket(tokens_per_min) if tokens_per_min else None
        self.pause_after = pause_after
        self.pause_s = pause_s
        self._changed = asyncio.Condition()

    @property
    def capacity(self) -> int:
        return sum(e.limit for e in self.endpoints)

    def _pick(self) -> Endpoint | None:
        now = time.monotonic()
        ready = [e for e in self.endpoints if e.in_flight < e.limit and e.paused_until <= now]
        return min(ready, key=lambda e: e.load) if ready else None

    def _wait_s(self, tokens: float) -> float:
        waits = [0.0]
        if self.requests is not None:
            waits.append(self.requests.wait_s(1))
        if self.tokens is not None:
            waits.append(self.tokens.wait_s(tokens))
        return max(waits)

    async def acquire(self, tokens: float = 0.0) -> Endpoint:
        """An endpoint for one request that reserves `tokens` (estimated); release it with `release`."""
        async with self._changed:
            while True:
                endpoint = self._pick()
                delay = self._wait_s(tokens)
                if endpoint is not None and delay == 0:
                    break
                if endpoint is None:  # all busy or paused: wake on a release or when a pause ends
                    now = time.monotonic()
                    pauses = [e.paused_until - now for e in self.endpoints if e.paused_until > now]
                    delay = min(pauses) if pauses and all(e.in_flight == 0 for e in self.endpoints) else 1.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=max(delay, 0.001))
            endpoint.in_flight += 1
            endpoint.requests += 1
            if self.requests is not None:
                self.requests.take(1)
            if self.tokens is not None:
                self.tokens.take(tokens)
            return endpoint

    async def release(
        self, endpoint: Endpoint, *, ok: bool, reserved: float = 0.0, used: float | None = None
    ) -> None:
        """Return an endpoint; `ok` is whether the request succeeded (after retries), `used` its real tokens."""
        async with self._changed:
            endpoint.in_flight -= 1
            if ok:
                endpoint.failures = 0
            else:
                endpoint.errors += 1
                endpoint.failures += 1
                if endpoint.failures >= self.pause_after:
                    endpoint.paused_until = time.monotonic() + self.pause_s
                    endpoint.failures = 0
            if self.tokens is not None and used is not None:
                if used < reserved:
                    self.tokens.give_back(reserved - used)
                else:
                    self.tokens.take(used - reserved)
            self._changed.notify_all()

    def healthy(self) -> int:
        now = time.monotonic()
        return sum(e.paused_until <= now for e in self.endpoints)
