"""Is model a better than model b, and does a merge beat its parents? Paired comparisons on shared items.

The per-item difference of mean pass is resampled by a paired bootstrap (interval and p-value), and checked by an
exact sign-flip permutation test, which stays honest when only a handful of items differ (the bootstrap is
over-confident there). Merge synergy: the groups where a merged model beats every parent, each with its paired
comparisons.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from branchmerge.evaluate.stats.groups import ALL, ItemKey, group_order, item_means, split
from branchmerge.evaluate.stats.passk import CHUNK, resampled_means
from branchmerge.records import EvalSample


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
    rows, hits = max(1, CHUNK // d.size), 0
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
    means = resampled_means(d, resamples, seed)
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


def ratio_interval(
    base: np.ndarray, expert: np.ndarray, merge: np.ndarray, *, resamples: int = 2000, seed: int = 0
) -> tuple[float | None, float | None]:
    """95% percentile-bootstrap interval of mean(merge − base) / mean(expert − base), resampling items jointly.

    A resample where the expert does not gain (denominator ≤ 0) has no ratio. Past 2.5% of such resamples the
    interval is unbounded and (None, None) is returned; the share itself is only reported when the expert's gain
    is significant, which keeps that rare.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, base.size, size=(resamples, base.size))
    num = (merge - base)[idx].mean(axis=1)
    den = (expert - base)[idx].mean(axis=1)
    ok = den > 0
    if ok.mean() < 0.975:
        return None, None
    lo, hi = np.quantile(num[ok] / den[ok], [0.025, 0.975])
    return float(lo), float(hi)
