"""pass@1 and pass@k, with intervals.

- pass@1: the mean pass over an item's samples, then the mean over items.
- pass@k: the unbiased estimator of Chen et al. 2021 (Codex paper, eq. 1), per item with that item's n.
- Intervals: percentile bootstrap over ITEMS. The samples of one item are correlated (an item the model cannot
  do fails at every temperature), so resampling samples would give intervals that are too narrow; an item is
  resampled with all of its samples. `wilson_interval` is the binomial one, for a plain count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from branchmerge.evaluate.stats.groups import item_means, item_outcomes, split
from branchmerge.records import EvalSample

CHUNK = 1 << 21  # bootstrap/permutation matrices are built in chunks of about this many entries


def wilson_interval(passes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (well-behaved at 0 and 1, unlike the normal one)."""
    if total == 0:
        return (0.0, 0.0)
    p = passes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one item with c correct of n samples (Chen et al. 2021, eq. 1):

        pass@k = 1 − C(n−c, k) / C(n, k) = 1 − Π_{i=n−c+1}^{n} (1 − k/i)

    The product form never builds the binomials, which overflow floats long before n = 1000.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass1(samples: Iterable[EvalSample]) -> float:
    """Mean over items of the mean pass over each item's samples."""
    means = list(item_means(samples).values())
    return sum(means) / len(means) if means else float("nan")


def pass_at_k_curve(samples: Iterable[EvalSample], max_k: int | None = None) -> dict[int, float]:
    """k -> mean over items of pass@k, for k = 1 .. min over items of n (capped at max_k).

    Items may have different numbers of samples: each uses its own n, so k cannot exceed the smallest.
    """
    counts = [(len(v), sum(v)) for v in item_outcomes(samples).values()]
    if not counts:
        return {}
    top = min(n for n, _ in counts)
    if max_k is not None:
        top = min(top, max_k)
    return {k: sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) for k in range(1, top + 1)}


def pass_at_k_curves(
    samples: Iterable[EvalSample],
    *,
    by: str | None = "domain",
    max_k: int | None = None,
    difficulty: Mapping[str, str | None] | None = None,
) -> dict[str, dict[str, dict[int, float]]]:
    """model -> group (and "all") -> k -> pass@k."""
    return {
        m: {g: pass_at_k_curve(ss, max_k) for g, ss in groups.items()}
        for m, groups in split(samples, by, difficulty).items()
    }


@dataclass(frozen=True)
class Estimate:
    """pass@1 with its percentile-bootstrap interval over items."""

    value: float
    lo: float
    hi: float
    items: int
    samples: int


def resampled_means(x: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` bootstrap resamples of x (with replacement, same size), built in chunks."""
    rng = np.random.default_rng(seed)
    rows = max(1, CHUNK // max(1, x.size))
    out = []
    for start in range(0, resamples, rows):
        idx = rng.integers(0, x.size, size=(min(rows, resamples - start), x.size))
        out.append(x[idx].mean(axis=1))
    return np.concatenate(out)


def bootstrap_mean(
    values: Sequence[float], *, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of `values` and its percentile-bootstrap interval."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_mean: no values")
    means = resampled_means(x, resamples, seed)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(lo), float(hi)


def pass1_ci(
    samples: Iterable[EvalSample], *, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """pass@1 with a bootstrap interval over items (each item resampled with all of its samples)."""
    samples = list(samples)
    value, lo, hi = bootstrap_mean(
        list(item_means(samples).values()), resamples=resamples, seed=seed, level=level
    )
    return Estimate(value, lo, hi, items=len(item_outcomes(samples)), samples=len(samples))


def pass1_table(
    samples: Iterable[EvalSample],
    *,
    by: str | None = "domain",
    difficulty: Mapping[str, str | None] | None = None,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, Estimate]]:
    """model -> group (and "all") -> pass@1 with its bootstrap interval."""
    return {
        m: {g: pass1_ci(ss, resamples=resamples, seed=seed, level=level) for g, ss in groups.items()}
        for m, groups in split(samples, by, difficulty).items()
    }


def items_for_width(p: float, width: float, z: float = 1.96) -> int:
    """Items for a 95% interval `width` wide around a pass rate p, one sample per item (normal approximation
    of the binomial: width = 2z·sqrt(p(1−p)/n)); p is clipped to [0.05, 0.95] so a rate at 0 or 1 still asks
    for a sensible number. A planning figure, not a guarantee: samples per item and the bootstrap change it."""
    q = min(0.95, max(0.05, p))
    return math.ceil((2 * z) ** 2 * q * (1 - q) / width**2)
