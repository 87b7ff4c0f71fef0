"""Statistics that tell signal from noise: Wilson intervals and a paired sign-flip permutation test."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable

from branchmerge.records import EvalSample


def wilson_interval(passes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (well-behaved at 0 and 1, unlike the normal one)."""
    if total == 0:
        return (0.0, 0.0)
    p = passes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def item_scores(samples: Iterable[EvalSample]) -> dict[str, float]:
    """Mean pass over the samples of each item (pass@1 averaged over k samples)."""
    acc: dict[str, list[bool]] = defaultdict(list)
    for s in samples:
        acc[s.item_id].append(s.passed)
    return {k: sum(v) / len(v) for k, v in acc.items()}


def accuracy_table(samples: Iterable[EvalSample]) -> dict[str, dict[str, tuple[float, int]]]:
    """model -> domain (and "all") -> (accuracy, number of samples)."""
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for s in samples:
        for d in (s.domain, "all"):
            c = counts[s.model][d]
            c[0] += int(s.passed)
            c[1] += 1
    return {m: {d: (c[0] / c[1], c[1]) for d, c in ds.items()} for m, ds in counts.items()}


def paired_test(
    a: dict[str, float], b: dict[str, float], *, iterations: int = 20000, seed: int = 0
) -> tuple[float, float]:
    """Mean difference (b − a) over shared items and its two-sided p-value by a sign-flip permutation test.

    Under the null hypothesis the two models are exchangeable on each item, so the sign of each per-item
    difference is a coin flip. Exact enumeration when there are at most 16 non-zero differences.
    """
    items = sorted(set(a) & set(b))
    if not items:
        raise ValueError("paired_test: the two models share no items")
    diffs = [b[i] - a[i] for i in items]
    observed = sum(diffs) / len(diffs)
    nonzero = [d for d in diffs if d != 0]
    if not nonzero:
        return observed, 1.0
    target = abs(sum(nonzero)) - 1e-12
    if len(nonzero) <= 16:
        hits = 0
        for mask in range(1 << len(nonzero)):
            s = sum(-d if mask >> j & 1 else d for j, d in enumerate(nonzero))
            hits += abs(s) >= target
        return observed, hits / (1 << len(nonzero))
    rng = random.Random(seed)
    hits = sum(
        abs(sum(d if rng.random() < 0.5 else -d for d in nonzero)) >= target for _ in range(iterations)
    )
    return observed, (hits + 1) / (iterations + 1)
