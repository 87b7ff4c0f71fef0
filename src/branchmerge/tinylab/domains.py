"""Procedural domains whose generators write a question, a step-by-step solution and the answer.

Each domain has levels 1..MAX_LEVEL; a higher level means longer numbers or lists. Items are a pure function of
(domain, seed, index), so held-out sets are reproducible and disjoint from training sets by seed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from branchmerge.records import Problem

MAX_LEVEL = 4


@dataclass(frozen=True)
class Item:
    domain: str
    level: int
    question: str
    solution: str  # the step-by-step reasoning
    answer: str


def _add(rng: random.Random, level: int) -> Item:
    """Column addition with carries; level = digits of the longer number - 1 (2..5 digits)."""
    digits = level + 1
    a = rng.randint(10 ** (digits - 1), 10**digits - 1)
    b = rng.randint(10 ** (digits - 2), 10**digits - 1)
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry, out = [], 0, []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        expr = f"{x}+{y}" + (f"+{carry}" if carry else "")
        steps.append(f"{expr}={s}, write {s % 10} carry {s // 10}")
        out.append(str(s % 10))
        carry = s // 10
    if carry:
        steps.append(f"write {carry}")
        out.append(str(carry))
    answer = str(a + b)
    assert "".join(reversed(out)) == answer
    return Item("add", level, f"What is {a}+{b}?", "\n".join(steps), answer)


def _sort(rng: random.Random, level: int) -> Item:
    """Selection sort of a list of 3..6 numbers below 100, one minimum per step."""
    xs = [rng.randint(0, 99) for _ in range(level + 2)]
    rest, steps, done = list(xs), [], []
    while rest:
        m = min(rest)
        rest.remove(m)
        done.append(m)
        steps.append(f"take {m}, left " + (" ".join(map(str, rest)) if rest else "none"))
    answer = " ".join(map(str, done))
    return Item("sort", level, "Sort ascending: " + " ".join(map(str, xs)), "\n".join(steps), answer)


def _compare(rng: random.Random, level: int) -> Item:
    """Largest of 3..6 numbers below 1000 by a chain of pairwise comparisons with a running maximum."""
    xs = [rng.randint(0, 999) for _ in range(level + 2)]
    best, steps = xs[0], [f"start {xs[0]}"]
    for x in xs[1:]:
        if x > best:
            steps.append(f"{x}>{best}, keep {x}")
            best = x
        else:
            steps.append(f"{x}<={best}, keep {best}")
    q = "Which is largest: " + ", ".join(map(str, xs)) + "?"
    return Item("compare", level, q, "\n".join(steps), str(best))


DOMAINS: dict[str, Callable[[random.Random, int], Item]] = {"add": _add, "sort": _sort, "compare": _compare}
GRADERS: dict[str, dict[str, str]] = {
    "add": {"type": "numeric"},
    "sort": {"type": "exact"},
    "compare": {"type": "numeric"},
}


def _rng(domain: str, seed: int, index: int) -> random.Random:
    h = hashlib.sha256(f"{domain}:{seed}:{index}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


def make_item(
    domain: str, seed: int, index: int, levels: tuple[int, ...] = tuple(range(1, MAX_LEVEL + 1))
) -> Item:
    """The `index`-th item of `domain` for `seed`; its level cycles through `levels`."""
    if domain not in DOMAINS:
        raise KeyError(f"unknown tinylab domain '{domain}' (known: {', '.join(DOMAINS)})")
    level = levels[index % len(levels)]
    return DOMAINS[domain](_rng(domain, seed, index), level)


def generate_problems(
    domain: str,
    count: int,
    seed: int,
    levels: tuple[int, ...] = tuple(range(1, MAX_LEVEL + 1)),
    exclude: set[str] | None = None,
) -> list[Problem]:
    """`count` distinct problems of `domain`; questions in `exclude` are skipped (keeps eval sets held out)."""
    seen = set(exclude or ())
    out: list[Problem] = []
    index = 0
    while len(out) < count:
        if index >= 50 * count + 1000:  # before the skip below, or an exhausted space loops forever
            raise ValueError(f"cannot find {count} distinct '{domain}' problems for levels {levels}")
        item = make_item(domain, seed, index, levels)
        index += 1
        if item.question in seen:
            continue
        seen.add(item.question)
        out.append(
            Problem(
                id=f"{domain}-{seed}-{index - 1}",
                domain=domain,
                question=item.question,
                reference=item.answer,
                grader=dict(GRADERS[domain]),
                level=item.level,
                source="tinylab",
                meta={"solution": item.solution},
            )
        )
    return out
