"""Plans for planning and optimisation problems: read the model's plan, check every constraint, then the objective.

The instance travels in the spec, so the grader needs nothing else (the reference is a readable optimal plan):
- {"type": "plan", "kind": "knapsack", "items": [{"name", "weight", "value"}, ...], "capacity": C, "optimum": V}
  The plan lists the chosen items. Constraints: every name is an item, no item twice, total weight <= C.
  Objective (maximised): total value.
- {"type": "plan", "kind": "schedule", "jobs": [{"name", "duration", "weight"?, "deadline"?}, ...],
  "before": [[a, b], ...], "optimum": T}. The plan lists every job in processing order on one machine that starts at
  time 0 and never idles. Constraints: every name is a job, no job twice, every job present, `a` before `b`, each
  job completes by its deadline. Objective (minimised): sum of weight x completion time (weight defaults to 1).
- {"type": "plan", "kind": "route", "start": "Depot", "places": [...], "distance": [[...], ...],
  "before": [[a, b], ...], "optimum": D}. The plan is the tour, from `start` back to `start`. Constraints: it starts
  and ends at `start`, every name is a place, no place twice, every place visited, `a` visited before `b`.
  Objective (minimised): total distance (`distance[i][j]` between `places[i]` and `places[j]`).

Reading the plan: the last line that starts with "Plan:" (any case; markdown `**`, `#`, `>` and backticks
ignored); without one, an answer of a single line is the plan. Names are separated by commas, "and" or arrows
(`->`, `→`), matched case-insensitively; "none" is an empty plan. The answer passes when every constraint holds
and the objective equals the spec's `optimum`; otherwise the detail names the first violated constraint, or the
objective against the optimum. `check_plan` is the same check on a parsed plan, used by generators to find the optimum.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from branchmerge.graders.base import Grade, Grader, GraderSpec

KINDS = ("knapsack", "schedule", "route")
_PLAN_LINE = re.compile(r"^[\s>#*_`-]*plan[\s*_`]*:(.*)$", re.IGNORECASE | re.MULTILINE)
_SEP = re.compile(r"\s*(?:,\s*and\b|,|->|→|=>|\band\b)\s*", re.IGNORECASE)


def parse_plan(answer: str) -> list[str] | None:
    """The names of the plan in `answer`, or None when it holds no plan."""
    lines = _PLAN_LINE.findall(answer)
    if lines:
        text = lines[-1]
    elif answer.strip() and "\n" not in answer.strip():
        text = answer
    else:
        return None
    text = text.strip().strip("*`_ ").rstrip(".")
    if text.casefold() in ("", "none", "nothing", "(none)"):
        return []
    return [name.strip().strip("\"'`*[]").strip() for name in _SEP.split(text)]


def _canonical(plan: list[str], names: list[str], what: str) -> tuple[list[str], str | None]:
    by_fold = {n.casefold(): n for n in names}
    for step in plan:
        if step.casefold() not in by_fold:
            return (
                [],
                f"constraint 'known {what}s': {step!r} is not a known {what} (known: {', '.join(names)})",
            )
    return [by_fold[s.casefold()] for s in plan], None


def _twice(plan: list[str], what: str) -> str | None:
    repeated = [n for n, k in Counter(plan).items() if k > 1]
    return f"constraint 'each {what} at most once': {repeated[0]} appears twice" if repeated else None


def _order(plan: list[str], before: list[list[str]]) -> str | None:
    where = {n: i for i, n in enumerate(plan)}
    for a, b in before:
        if where[a] > where[b]:
            return f"constraint '{a} before {b}': {b} comes first"
    return None


def _knapsack(plan: list[str], spec: dict[str, Any]) -> tuple[str | None, int]:
    items = {it["name"]: it for it in spec["items"]}
    plan, bad = _canonical(plan, list(items), "item")
    if bad or (bad := _twice(plan, "item")):
        return bad, 0
    weight = sum(items[n]["weight"] for n in plan)
    if weight > spec["capacity"]:
        return f"constraint 'capacity': total weight {weight} exceeds {spec['capacity']}", 0
    return None, sum(items[n]["value"] for n in plan)


def _schedule(plan: list[str], spec: dict[str, Any]) -> tuple[str | None, int]:
    jobs = {j["name"]: j for j in spec["jobs"]}
    plan, bad = _canonical(plan, list(jobs), "job")
    if bad or (bad := _twice(plan, "job")):
        return bad, 0
    missing = [n for n in jobs if n not in plan]
    if missing:
        return f"constraint 'every job scheduled': {missing[0]} is missing", 0
    if bad := _order(plan, spec.get("before", [])):
        return bad, 0
    t, total = 0, 0
    for name in plan:
        job = jobs[name]
        t += job["duration"]
        if "deadline" in job and t > job["deadline"]:
            return (
                f"constraint 'deadline of {name}': it completes at {t}, after its deadline {job['deadline']}",
                0,
            )
        total += job.get("weight", 1) * t
    return None, total


def _route(plan: list[str], spec: dict[str, Any]) -> tuple[str | None, int]:
    places, start = list(spec["places"]), spec["start"]
    plan, bad = _canonical(plan, places, "place")
    if bad:
        return bad, 0
    if not plan or plan[0] != start:
        return f"constraint 'starts at {start}': the route starts at {plan[0] if plan else 'nothing'}", 0
    if len(plan) < 2 or plan[-1] != start:
        return f"constraint 'ends at {start}': the route ends at {plan[-1]}", 0
    inner = plan[1:-1]
    if bad := _twice(inner + [start], "place"):
        return bad, 0
    missing = [p for p in places if p != start and p not in inner]
    if missing:
        return f"constraint 'every place visited': {missing[0]} is missing", 0
    if bad := _order(inner, spec.get("before", [])):
        return bad, 0
    index = {p: i for i, p in enumerate(places)}
    return None, sum(spec["distance"][index[a]][index[b]] for a, b in zip(plan, plan[1:], strict=False))


_CHECKS = {"knapsack": _knapsack, "schedule": _schedule, "route": _route}
MAXIMISE = {"knapsack"}


def check_plan(plan: list[str], spec: dict[str, Any]) -> tuple[str | None, int]:
    """(the first violated constraint or None, the objective value when none is violated)."""
    kind = spec.get("kind")
    if kind not in _CHECKS:
        raise ValueError(f"plan grader: kind {kind!r} is not known (known: {', '.join(KINDS)})")
    return _CHECKS[kind](plan, spec)


class PlanSpec(GraderSpec):
    """The instance's fields (items, jobs, places, ...) depend on `kind` and are checked by `check_plan`."""

    kind: str | None = None
    optimum: int | float | None = None


def grade_plan(answer: str, reference: str, plan_spec: PlanSpec) -> Grade:
    spec = plan_spec.model_dump(exclude_unset=True)
    if "optimum" not in spec:
        raise ValueError("plan grader: the spec has no 'optimum' (the best objective value)")
    plan = parse_plan(answer)
    if plan is None:
        return Grade(False, "no plan found: end the answer with a line 'Plan: <name>, <name>, ...'")
    violation, value = check_plan(plan, spec)
    if violation:
        return Grade(False, violation)
    best = spec["optimum"]
    if value != best:
        aim = "maximum" if spec["kind"] in MAXIMISE else "minimum"
        return Grade(False, f"objective: the plan is feasible but scores {value}; the {aim} is {best}")
    return Grade(True, "")


PLAN = Grader("plan", PlanSpec, grade_plan)
