"""Statistics that tell signal from noise.

- pass@1: the mean pass over an item's samples, then the mean over items.
- pass@k: the unbiased estimator of Chen et al. 2021 (Codex paper, eq. 1), per item with that item's n.
- Intervals: percentile bootstrap over ITEMS. The samples of one item are correlated (an item the model cannot
  do fails at every temperature), so resampling samples would give intervals that are too narrow; an item is
  resampled with all of its samples.
- Paired comparisons: the same items for both models, the per-item difference of mean pass resampled by a paired
  bootstrap (interval and p-value), checked by an exact sign-flip permutation test, which stays honest when
  only a handful of items differ (the bootstrap is over-confident there).
- Merge synergy, and output/reasoning tokens per model × domain, level or difficulty.

Groups (`by`) name an EvalSample field ("domain", "level", "benchmark"), "difficulty" (looked up in a mapping
item id -> difficulty, since samples carry none), or None; every table also has the group "all".
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from branchmerge.records import EvalSample

ALL = "all"
NONE = "n/a"  # the group of samples whose level or difficulty is unknown
ItemKey = tuple[str, str]  # (benchmark, item_id): two benchmarks may reuse an id
_DIFFICULTY_ORDER = ("easy", "medium", "hard")
_CHUNK = 1 << 21  # bootstrap/permutation matrices are built in chunks of about this many entries


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


# ---------------------------------------------------------------------------------------------------- grouping


def group_of(s: EvalSample, by: str | None, difficulty: Mapping[str, str | None] | None = None) -> str:
    """The group a sample falls in: its domain, level, benchmark or difficulty as text (NONE if unknown)."""
    if by is None:
        return ALL
    value = (difficulty or {}).get(s.item_id) if by == "difficulty" else getattr(s, by)
    return NONE if value is None else str(value)


def group_order(groups: Iterable[str]) -> list[str]:
    """Levels numerically, difficulties easy → hard, other names alphabetically; "n/a" and "all" last."""

    def key(g: str) -> tuple[int, float, str]:
        if g == ALL:
            return (3, 0.0, g)
        if g == NONE:
            return (2, 0.0, g)
        if g.lstrip("-").isdigit():
            return (0, float(g), g)
        if g in _DIFFICULTY_ORDER:
            return (0, float(_DIFFICULTY_ORDER.index(g)), g)
        return (1, 0.0, g.lower())

    return sorted(set(groups), key=key)


def split(
    samples: Iterable[EvalSample], by: str | None, difficulty: Mapping[str, str | None] | None = None
) -> dict[str, dict[str, list[EvalSample]]]:
    """model -> group -> samples, with every sample also in the group "all"."""
    out: dict[str, dict[str, list[EvalSample]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        out[s.model][ALL].append(s)
        if by is not None:
            out[s.model][group_of(s, by, difficulty)].append(s)
    return {m: dict(gs) for m, gs in out.items()}


def item_outcomes(samples: Iterable[EvalSample]) -> dict[ItemKey, list[bool]]:
    """(benchmark, item) -> the pass of each of its samples."""
    acc: dict[ItemKey, list[bool]] = defaultdict(list)
    for s in samples:
        acc[(s.benchmark, s.item_id)].append(s.passed)
    return dict(acc)


def item_means(samples: Iterable[EvalSample]) -> dict[ItemKey, float]:
    """(benchmark, item) -> mean pass over its samples."""
    return {k: sum(v) / len(v) for k, v in item_outcomes(samples).items()}


# ---------------------------------------------------------------------------------------------------- pass@k


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


# ---------------------------------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class Estimate:
    """pass@1 with its percentile-bootstrap interval over items."""

    value: float
    lo: float
    hi: float
    items: int
    samples: int


def _resampled_means(x: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` bootstrap resamples of x (with replacement, same size), built in chunks."""
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK // max(1, x.size))
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
    means = _resampled_means(x, resamples, seed)
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


# ---------------------------------------------------------------------------------------------------- paired


@dataclass(frozen=True)
class Comparison:
    """Model a against model b on the items both answered: diff = mean over items of (pass_a − pass_b)."""

    diff: float
    lo: float
    hi: float
    p: float  # two-sided, paired bootstrap
    p_sign: float  # two-sided, sign-flip permutation test (exact up to 16 differing items)
    items: int  # shared items the comparison rests on
    left_out: int  # items only one of the two models answered
    alpha: float = 0.05

    @property
    def significant(self) -> bool:
        """The interval excludes 0 and both tests reject "no difference" at level alpha."""
        return (self.lo > 0 or self.hi < 0) and max(self.p, self.p_sign) < self.alpha


def sign_flip_p(diffs: Sequence[float], *, iterations: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value that the mean of paired differences is 0, by flipping their signs.

    Under the null the two models are exchangeable on each item, so each difference's sign is a coin flip.
    Exact enumeration when at most 16 differences are non-zero, else Monte Carlo with (hits + 1)/(iterations + 1).
    """
    d = np.asarray([x for x in diffs if x != 0], dtype=float)
    if d.size == 0:
        return 1.0
    target = abs(d.sum()) * (1 - 1e-9) - 1e-12  # ties with the observed sum count as hits
    if d.size <= 16:
        bits = (np.arange(1 << d.size)[:, None] >> np.arange(d.size)) & 1
        return float(np.mean(np.abs((1 - 2 * bits) @ d) >= target))
    rng = np.random.default_rng(seed)
    rows, hits = max(1, _CHUNK // d.size), 0
    for start in range(0, iterations, rows):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(rows, iterations - start), d.size))
        hits += int(np.sum(np.abs(signs @ d) >= target))
    return (hits + 1) / (iterations + 1)


def paired_test(
    a: dict[str, float], b: dict[str, float], *, iterations: int = 20000, seed: int = 0
) -> tuple[float, float]:
    """Mean difference (b − a) over shared items and its two-sided sign-flip permutation p-value."""
    items = sorted(set(a) & set(b))
    if not items:
        raise ValueError("paired_test: the two models share no items")
    diffs = [b[i] - a[i] for i in items]
    return sum(diffs) / len(diffs), sign_flip_p(diffs, iterations=iterations, seed=seed)


def paired_compare(
    a: Mapping[ItemKey, float],
    b: Mapping[ItemKey, float],
    *,
    resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Comparison:
    """a − b on the items both have: paired-bootstrap percentile interval and two-sided p-values.

    Bootstrap p = 2·min(share of resampled means ≤ 0, share ≥ 0), each share counted as (hits + 1)/(B + 1), so
    p < alpha exactly when the (1 − alpha) interval lies on one side of 0, up to that +1.
    """
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError("paired_compare: the two models share no items")
    d = np.array([a[i] - b[i] for i in shared], dtype=float)
    means = _resampled_means(d, resamples, seed)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    below, above = (np.sum(means <= 0) + 1) / (resamples + 1), (np.sum(means >= 0) + 1) / (resamples + 1)
    return Comparison(
        diff=float(d.mean()),
        lo=float(lo),
        hi=float(hi),
        p=float(min(1.0, 2 * min(below, above))),
        p_sign=sign_flip_p(d.tolist(), seed=seed),
        items=len(shared),
        left_out=len(set(a) ^ set(b)),
        alpha=alpha,
    )


def compare(
    samples: Iterable[EvalSample],
    a: str,
    b: str,
    *,
    by: str | None = "domain",
    difficulty: Mapping[str, str | None] | None = None,
    resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Comparison]:
    """group (and "all") -> model a − model b on their shared items; groups they do not share are left out."""
    groups = split(samples, by, difficulty)
    for m in (a, b):
        if m not in groups:
            raise ValueError(
                f"compare: '{m}' is not a model in the samples (known: {', '.join(sorted(groups))})"
            )
    out = {}
    for g in group_order(set(groups[a]) & set(groups[b])):
        ma, mb = item_means(groups[a][g]), item_means(groups[b][g])
        if set(ma) & set(mb):
            out[g] = paired_compare(ma, mb, resamples=resamples, seed=seed, alpha=alpha)
    return out


# ---------------------------------------------------------------------------------------------------- synergy


@dataclass(frozen=True)
class Synergy:
    """A group where a merged model beats every parent, with its paired comparison against each parent."""

    group: str
    merged: float  # pass@1 on the items the merge and all parents share
    parents: dict[str, float]
    vs: dict[str, Comparison]  # merged − parent
    items: int

    @property
    def significant(self) -> bool:
        return all(c.significant for c in self.vs.values())


def merge_synergy(
    samples: Iterable[EvalSample],
    merged: str,
    parents: Sequence[str],
    *,
    by: str = "domain",
    difficulty: Mapping[str, str | None] | None = None,
    resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[Synergy]:
    """Groups (not "all") where `merged` has a higher pass@1 than EVERY parent on the items all of them share.

    Beating both parents on point estimates is a claim; each row carries the paired comparison against each
    parent so the reader sees whether it is signal (`Synergy.significant`) or noise.
    """
    groups = split(samples, by, difficulty)
    models = [merged, *parents]
    for m in models:
        if m not in groups:
            raise ValueError(f"merge_synergy: '{m}' is not a model in the samples")
    rows = []
    for g in group_order(set.intersection(*(set(groups[m]) for m in models)) - {ALL}):
        means = {m: item_means(groups[m][g]) for m in models}
        shared = set.intersection(*(set(v) for v in means.values()))
        if not shared:
            continue
        means = {m: {k: v[k] for k in shared} for m, v in means.items()}
        score = {m: sum(v.values()) / len(v) for m, v in means.items()}
        if all(score[merged] > score[p] for p in parents):
            vs = {
                p: paired_compare(means[merged], means[p], resamples=resamples, seed=seed, alpha=alpha)
                for p in parents
            }
            rows.append(Synergy(g, score[merged], {p: score[p] for p in parents}, vs, len(shared)))
    return rows


# ---------------------------------------------------------------------------------------------------- lengths


@dataclass(frozen=True)
class Lengths:
    """Mean tokens per sample, and the share of samples cut at the token limit (finish_reason "length")."""

    output: float
    reasoning: float
    truncated: float
    samples: int


def length_table(
    samples: Iterable[EvalSample],
    *,
    by: str | None = "domain",
    difficulty: Mapping[str, str | None] | None = None,
) -> dict[str, dict[str, Lengths]]:
    """model -> group (and "all") -> mean output tokens, mean reasoning tokens, truncation rate."""
    out: dict[str, dict[str, Lengths]] = {}
    for m, groups in split(samples, by, difficulty).items():
        out[m] = {
            g: Lengths(
                output=sum(s.output_tokens for s in ss) / len(ss),
                reasoning=sum(s.reasoning_tokens for s in ss) / len(ss),
                truncated=sum(s.finish_reason == "length" for s in ss) / len(ss),
                samples=len(ss),
            )
            for g, ss in groups.items()
        }
    return out
