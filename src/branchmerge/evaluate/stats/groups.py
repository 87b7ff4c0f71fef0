"""Who a sample belongs to (its group and its item), and the plain tables built on that: per-item mean pass,
accuracy per model and domain.

Groups (`by`) name an EvalSample field ("domain", "level", "benchmark"), "difficulty" (looked up in a mapping
item id -> difficulty, since samples carry none), or None; every table also has the group "all".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from branchmerge.records import EvalSample

ALL = "all"
NONE = "n/a"  # the group of samples whose level or difficulty is unknown
ItemKey = tuple[str, str]  # (benchmark, item_id): two benchmarks may reuse an id
_DIFFICULTY_ORDER = ("easy", "medium", "hard")


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
