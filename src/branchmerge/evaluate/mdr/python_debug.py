"""mdr domain `python`: find and fix the bug in a short Python function, graded by hidden tests (grader `code`).

Each item shows a buggy function whose docstring says what it should do; the answer is the corrected function.
Levels run from an off-by-one to subtle algorithmic bugs:
1 range end · 2 extreme value seeded with 0 · 3 palindrome normalisation · 4 binary search bound ·
5 mutable default argument · 6 median of an even-length list · 7 removing from a list while iterating it ·
8 aliased rows of a grid, or closures that capture a loop variable · 9 coin change counting orders ·
10 Dijkstra keeping the first distance found, or interval merging that shrinks an interval.

The hidden tests are `assert <call> == <expected>` lines. The calls are chosen (the "trigger" calls expose the
bug) or drawn at random; the expected values come from running our reference fix on them here, never from hand
arithmetic. The test suite checks, for every fixed item and for generated ones, that the buggy code fails the tests
and the reference fix passes them. `generate` picks a variant of the level's bug, a function name and fresh random
test calls.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from branchmerge.evaluate.mdr.base import Domain
from branchmerge.records import Problem

NAME = "python"
Cases = Callable[[random.Random], list[str]]  # rng -> test expressions, with {fn} for the function's name


@dataclass(frozen=True)
class Bug:
    """One buggy function and its fix: `fix` replaces each (old, new) text of `code`, old occurring exactly once.
    Texts use `{fn}` and the keys of a variant (`subs`) as placeholders."""

    names: tuple[str, ...]
    code: str
    fix: tuple[tuple[str, str], ...]
    triggers: tuple[str, ...]  # test expressions the buggy code gets wrong, in every variant
    cases: Cases
    variants: tuple[dict[str, str], ...] = field(default=({},))

    def fixed(self) -> str:
        code = self.code
        for old, new in self.fix:
            if code.count(old) != 1:
                raise ValueError(f"python_debug: {old!r} must occur once in the code of {self.names[0]}")
            code = code.replace(old, new)
        return code


def _fill(text: str, subs: dict[str, str]) -> str:
    for key, value in subs.items():
        text = text.replace("{" + key + "}", value)
    return text


def _ints(rng: random.Random, n: int, lo: int = -20, hi: int = 20) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(n)]


def _calls(fmt: Callable[[random.Random], str], k: int = 4) -> Cases:
    return lambda rng: [fmt(rng) for _ in range(k)]


def _palindromes(rng: random.Random) -> list[str]:
    word = "".join(rng.choice("abcXYZ") for _ in range(rng.randint(1, 5)))
    pal = word + word[::-1].swapcase() + rng.choice(["", "!", " ?"])
    return [f"{{fn}}({pal!r})", f"{{fn}}({word + 'q, ' + word[::-1]!r})", f"{{fn}}({word + 'Q'!r})"]


def _graph(rng: random.Random) -> str:
    nodes = "abcdefg"[: rng.randint(4, 7)]
    graph = {u: [(v, rng.randint(1, 9)) for v in nodes if v != u and rng.random() < 0.4] for u in nodes}
    return f"{{fn}}({graph!r}, 'a')"


def _intervals(rng: random.Random) -> str:
    return f"{{fn}}({[[s, s + rng.randint(0, 6)] for s in _ints(rng, rng.randint(1, 6), 0, 20)]})"


SUM_POWERS = Bug(
    names=("sum_powers", "power_sum", "add_powers"),
    code='''def {fn}(n):
    """Return 1**{p} + 2**{p} + ... + n**{p} (0 when n < 1)."""
    total = 0
    for i in range(1, n):
        total += i ** {p}
    return total
''',
    fix=(("range(1, n)", "range(1, n + 1)"),),
    triggers=("{fn}(1)", "{fn}(4)"),
    cases=_calls(lambda r: f"{{fn}}({r.randint(0, 25)})"),
    variants=({"p": "2"}, {"p": "1"}, {"p": "3"}),
)
EXTREME = Bug(
    names=("extreme", "pick_extreme", "best_value"),
    code='''def {fn}(values):
    """Return the {what} number in the non-empty list `values`."""
    best = 0
    for v in values:
        if v {op} best:
            best = v
    return best
''',
    fix=(("best = 0", "best = values[0]"),),
    triggers=("{fn}([-5, -2, -9])", "{fn}([7, 3, 12])"),
    cases=_calls(lambda r: f"{{fn}}({_ints(r, r.randint(1, 8))})"),
    variants=({"what": "largest", "op": ">"}, {"what": "smallest", "op": "<"}),
)
PALINDROME = Bug(
    names=("is_palindrome", "reads_backwards", "mirror_text"),
    code='''def {fn}(text):
    """Return True if `text` reads the same backwards, ignoring case and every character
    that is not a letter or a digit."""
    cleaned = [{keep} for c in text if {cond}]
    return cleaned == cleaned[::-1]
''',
    fix=(("[{keep} for c in text if {cond}]", "[c.lower() for c in text if c.isalnum()]"),),
    triggers=("{fn}('Was it a car, or a cat I saw?')", "{fn}('Racecar')", "{fn}('ab')"),
    cases=_palindromes,
    variants=({"keep": "c", "cond": "c.isalnum()"}, {"keep": "c.lower()", "cond": "c != ' '"}),
)
BINARY_SEARCH = Bug(
    names=("find_index", "search_sorted", "locate"),
    code='''def {fn}(items, target):
    """Return the index of `target` in the sorted list `items` of distinct numbers, or -1."""
    lo, hi = 0, len(items) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1
''',
    fix=(("while lo < hi:", "while lo <= hi:"),),
    triggers=("{fn}([5], 5)", "{fn}([1, 3, 5, 7], 7)", "{fn}([1, 3], 4)", "{fn}([], 1)"),
    cases=_calls(lambda r: f"{{fn}}({sorted(r.sample(range(50), r.randint(1, 9)))}, {r.randint(0, 49)})", 6),
)
MUTABLE_DEFAULT = Bug(
    names=("add_item", "collect", "with_item"),
    code='''def {fn}(item, bucket=[]):
    """Return `bucket` with `item` added at the {where}; called without a bucket, it starts
    from a new empty list."""
    {add}
    return bucket
''',
    fix=(
        ("bucket=[]", "bucket=None"),
        ("    {add}", "    if bucket is None:\n        bucket = []\n    {add}"),
    ),
    triggers=("{fn}(1)", "{fn}(2)", "{fn}('x', ['a'])", "{fn}(3)"),
    cases=_calls(
        lambda r: f"{{fn}}({r.randint(0, 99)})" if r.random() < 0.6 else f"{{fn}}(0, {_ints(r, 2)})"
    ),
    variants=(
        {"where": "end", "add": "bucket.append(item)"},
        {"where": "front", "add": "bucket.insert(0, item)"},
    ),
)
MEDIAN = Bug(
    names=("median", "middle_value", "median_of"),
    code='''def {fn}(values):
    """Return the median of the non-empty list `values` (the mean of the two middle values
    when the length is even)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2 == 1:
        return ordered[mid]
    return (ordered[mid] + ordered[mid + 1]) / 2
''',
    fix=(("(ordered[mid] + ordered[mid + 1])", "(ordered[mid - 1] + ordered[mid])"),),
    triggers=("{fn}([4, 1, 3, 2])", "{fn}([7, 5])", "{fn}([3])"),
    cases=_calls(lambda r: f"{{fn}}({_ints(r, r.randint(1, 8))})"),
)
REMOVE_WHILE_ITERATING = Bug(
    names=("drop_multiples", "remove_multiples", "strip_multiples"),
    code='''def {fn}(values):
    """Remove every multiple of {k} from the list `values` in place and return that same list."""
    for v in values:
        if v % {k} == 0:
            values.remove(v)
    return values
''',
    fix=(
        (
            "    for v in values:\n        if v % {k} == 0:\n            values.remove(v)\n",
            "    values[:] = [v for v in values if v % {k} != 0]\n",
        ),
    ),
    triggers=("{fn}([{k}, 2 * {k}, 1, 3 * {k}])", "(lambda xs: ({fn}(xs) is xs, xs))([1, {k}, {k}])"),
    cases=_calls(lambda r: f"{{fn}}({_ints(r, r.randint(0, 9), 0, 30)})"),
    variants=({"k": "2"}, {"k": "3"}, {"k": "5"}),
)
ALIASED_ROWS = Bug(
    names=("mark_grid", "count_marks", "tally_cells"),
    code='''def {fn}(rows, cols, marks):
    """Return a rows x cols grid (a list of `rows` lists) of 0s, with {step} added to cell
    [r][c] once for each (r, c) pair in `marks`."""
    grid = [[0] * cols] * rows
    for r, c in marks:
        grid[r][c] += {step}
    return grid
''',
    fix=(("[[0] * cols] * rows", "[[0] * cols for _ in range(rows)]"),),
    triggers=("{fn}(2, 3, [(0, 1)])", "{fn}(3, 2, [(2, 0), (2, 0), (1, 1)])"),
    cases=_calls(
        lambda r: f"{{fn}}(3, 4, {[(r.randrange(3), r.randrange(4)) for _ in range(r.randint(1, 5))]})"
    ),
    variants=({"step": "1"}, {"step": "2"}),
)
LATE_BINDING = Bug(
    names=("make_adders", "offset_functions", "build_ops"),
    code='''def {fn}(n):
    """Return a list of n functions; the i-th one (counting from 0) returns x {op} i for its
    argument x."""
    return [lambda x: x {op} i for i in range(n)]
''',
    fix=(("lambda x:", "lambda x, i=i:"),),
    triggers=("[f(10) for f in {fn}(3)]",),
    cases=_calls(lambda r: f"[f({r.randint(-9, 9)}) for f in {{fn}}({r.randint(2, 6)})]"),
    variants=({"op": "*"}, {"op": "+"}),
)
COIN_CHANGE = Bug(
    names=("count_change", "change_ways", "coin_combinations"),
    code='''def {fn}(amount, coins):
    """Return the number of ways to pay `amount` with unlimited coins of the given distinct
    values, where the order of the coins does not matter."""
    ways = [1] + [0] * amount
    for a in range(1, amount + 1):
        for c in coins:
            if c <= a:
                ways[a] += ways[a - c]
    return ways[amount]
''',
    fix=(
        (
            "    for a in range(1, amount + 1):\n        for c in coins:\n            if c <= a:\n"
            "                ways[a] += ways[a - c]\n",
            "    for c in coins:\n        for a in range(c, amount + 1):\n            ways[a] += ways[a - c]\n",
        ),
    ),
    triggers=("{fn}(3, [1, 2])", "{fn}(0, [5])", "{fn}(10, [2, 5, 3, 6])"),
    cases=_calls(
        lambda r: f"{{fn}}({r.randint(0, 30)}, {sorted(r.sample([1, 2, 3, 5, 7, 10], r.randint(1, 4)))})"
    ),
)
DIJKSTRA = Bug(
    names=("shortest_distances", "dijkstra", "distances_from"),
    code='''import heapq


def {fn}(graph, source):
    """Return a dict of the shortest distances from `source` to every node reachable from it.
    `graph` maps a node to a list of (neighbour, weight) pairs, weights >= 0."""
    dist = {source: 0}
    heap = [(0, source)]
    done = set()
    while heap:
        d, node = heapq.heappop(heap)
        if node in done:
            continue
        done.add(node)
        for nxt, w in graph.get(node, []):
            if nxt not in dist:
                dist[nxt] = d + w
                heapq.heappush(heap, (d + w, nxt))
    return dist
''',
    fix=(("if nxt not in dist:", "if nxt not in dist or d + w < dist[nxt]:"),),
    triggers=("{fn}({'a': [('b', 5), ('c', 1)], 'c': [('b', 1)]}, 'a')",),
    cases=_calls(_graph),
)
MERGE_INTERVALS = Bug(
    names=("merge_intervals", "join_ranges", "union_intervals"),
    code='''def {fn}(intervals):
    """Merge overlapping closed intervals [start, end] (touching ones too) and return the
    merged intervals as lists, sorted by start."""
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return merged
''',
    fix=(("merged[-1][1] = end", "merged[-1][1] = max(merged[-1][1], end)"),),
    triggers=("{fn}([[4, 5], [1, 10], [2, 3]])", "{fn}([[1, 2], [2, 4]])"),
    cases=_calls(_intervals),
)

# Level -> its bugs; the first is the fixed item's, `generate` picks any.
BUGS: dict[int, tuple[Bug, ...]] = {
    1: (SUM_POWERS,), 2: (EXTREME,), 3: (PALINDROME,), 4: (BINARY_SEARCH,), 5: (MUTABLE_DEFAULT,),
    6: (MEDIAN,), 7: (REMOVE_WHILE_ITERATING,), 8: (ALIASED_ROWS, LATE_BINDING), 9: (COIN_CHANGE,),
    10: (DIJKSTRA, MERGE_INTERVALS),
}  # fmt: skip


def run_reference(fixed: str, exprs: list[str]) -> list[str]:
    """`assert <expr> == <value>` for each expression, the value from our reference fix (trusted code, run here;
    model code runs only in the grader's sandbox). Calls run in order in one namespace, as the tests will."""
    namespace: dict[str, object] = {}
    exec(compile(fixed, "<reference fix>", "exec"), namespace)
    return [f"assert {expr} == {eval(expr, namespace)!r}" for expr in exprs]


def _problem(pid: str, level: int, bug: Bug, name: str, subs: dict[str, str], cases: list[str]) -> Problem:
    subs = {**subs, "fn": name}
    buggy, fixed = _fill(bug.code, subs), _fill(bug.fixed(), subs)
    tests = run_reference(fixed, [_fill(e, subs) for e in (*bug.triggers, *cases)])
    question = (
        "This Python function has a bug: for some inputs it does not do what its docstring says.\n\n"
        f"```python\n{buggy}```\n\nFind and fix the bug. Answer with the complete corrected code (same function "
        "name and parameters) in one ```python fenced block; hidden tests will call the function."
    )
    return Problem(
        id=pid, domain=NAME, question=question, reference=fixed, level=level, source="mdr",
        grader={"type": "code", "tests": tests, "entry_point": name, "timeout_s": 10},
        meta={"buggy": buggy, "bug": bug.names[0]},
    )  # fmt: skip


def items() -> list[Problem]:
    out = []
    for level in range(1, 11):
        bug = BUGS[level][0]
        cases = bug.cases(random.Random(f"mdr-{NAME}:fixed:{level}"))
        out.append(_problem(f"mdr-{NAME}-L{level}", level, bug, bug.names[0], bug.variants[0], cases))
    return out


def generate(level: int, seed: int) -> Problem:
    rng = random.Random(f"mdr-{NAME}:{level}:{seed}")
    bug = rng.choice(BUGS[level])
    name, subs = rng.choice(bug.names), rng.choice(bug.variants)
    return _problem(f"mdr-{NAME}-L{level}-s{seed}", level, bug, name, subs, bug.cases(rng))


DOMAIN = Domain(NAME, items, generate)  # collected by base.MODULES, in report order
