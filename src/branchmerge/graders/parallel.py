"""Grade many answers at once: cheap graders inline, the others in a process pool over all cores.

Processes rather than threads: math-verify is CPU-bound Python (sympy) and keeps its time limit only in a main
thread (see math.py), and code/SQL graders each wait on a sandboxed subprocess. The pool uses the "forkserver"
start method, so workers are forked from a clean server process (not from a grader that may hold threads, e.g.
torch's), with the graders and math-verify imported once in that server.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from branchmerge.graders.base import Grade, grade

# Graders that take microseconds: a process round trip would cost more than the grading.
INLINE = frozenset({"exact", "numeric", "choice", "regex", "constraints", "plan"})

Item = tuple[str, str, dict[str, Any]]


def _grade_item(item: Item) -> Grade:
    return grade(*item)


def _grade_or_error(item: Item) -> Grade:
    """A reference the grader cannot read (ValueError) becomes a failed Grade carrying the error."""
    try:
        return grade(*item)
    except ValueError as e:
        return Grade(False, f"grader error: {e}", error=str(e))


def grade_many(items: list[Item], workers: int | None = None, errors: str = "raise") -> list[Grade]:
    """`grade(answer, reference, spec)` for each item, in order. `workers` defaults to os.cpu_count(); with 1, or
    with at most one item that needs a worker, everything runs here. Exceptions (an unknown grader type, a bad
    reference) propagate as from `grade`; unknown types are reported before any work starts. With
    `errors="record"` a bad reference is a failed Grade whose `error` says why, and the batch goes on."""
    from branchmerge.graders.registry import GRADERS, unknown_graders

    unknown = sorted({kind for _, kind in unknown_graders(spec for _, _, spec in items)})
    if unknown:
        raise KeyError(f"grader type(s) {unknown} not known (known: {', '.join(sorted(GRADERS))})")
    workers = workers or os.cpu_count() or 1
    one = _grade_or_error if errors == "record" else _grade_item
    kinds = [spec.get("type", "exact") for _, _, spec in items]
    # LLM-judge items wait on an endpoint, not a core: they go to the judge's own concurrent batch in this
    # process (where `configure_judge` set the default judge), not to the pool.
    judged = [i for i, k in enumerate(kinds) if GRADERS[k].needs_judge]
    heavy = [i for i, k in enumerate(kinds) if k not in INLINE and not GRADERS[k].needs_judge]
    results: list[Grade | None] = [None] * len(items)
    if judged:
        from branchmerge.graders.judge import judge_many

        for i, g in zip(judged, judge_many([items[i] for i in judged]), strict=True):
            results[i] = g
    if workers > 1 and len(heavy) > 1:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["branchmerge.graders.registry", "math_verify"])
        with ProcessPoolExecutor(max_workers=min(workers, len(heavy)), mp_context=context) as pool:
            for i, g in zip(heavy, pool.map(one, [items[i] for i in heavy]), strict=True):
                results[i] = g
    for i, item in enumerate(items):
        if results[i] is None:
            results[i] = one(item)
    return [g for g in results if g is not None]
