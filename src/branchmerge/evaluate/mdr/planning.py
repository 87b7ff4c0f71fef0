"""mdr domain `planning`: planning and optimisation, graded by the `plan` validator (graders/plan.py).

Three kinds of instance, cycling with the level, each larger as the level grows:
- knapsack (levels 1, 4, 7, 10): 4, 6, 9, 12 items; choose the most valuable load within a weight limit;
- schedule (levels 2, 5, 8): 3, 5, 7 jobs on one machine, with 0, 2, 3 precedences and some deadlines (weights from
  level 8); order them to minimise the weighted sum of completion times;
- route (levels 3, 6, 9): 4, 6, 7 places around a depot, with 0, 1, 2 "visit a before b" rules; the shortest tour.
The optimum comes from brute force over every possible plan, scored by the grader's own `check_plan`, so the
reference plan and the grader agree by construction. The fixed items are instances written here by hand.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from branchmerge.evaluate.mdr.base import Domain
from branchmerge.graders.plan import MAXIMISE, check_plan
from branchmerge.records import Problem

NAME = "planning"
KIND_OF_LEVEL = {1: "knapsack", 4: "knapsack", 7: "knapsack", 10: "knapsack", 2: "schedule", 5: "schedule"}
KIND_OF_LEVEL |= {8: "schedule", 3: "route", 6: "route", 9: "route"}
SIZE = {1: 4, 4: 6, 7: 9, 10: 12, 2: 3, 5: 5, 8: 7, 3: 4, 6: 6, 9: 7}
RULES = {2: 0, 5: 2, 8: 3, 3: 0, 6: 1, 9: 2}  # precedence rules per schedule/route level
ITEM_NAMES = (
    "tent", "stove", "rope", "lamp", "map", "radio", "knife", "kettle", "blanket", "camera", "tarp", "compass",
    "flask", "saw",
)  # fmt: skip
PLACES = ("Ash", "Birch", "Cedar", "Elm", "Fir", "Hazel", "Larch", "Maple", "Oak", "Pine", "Rowan", "Willow")
FORMAT = "End your answer with one line of the form `Plan: {example}`: {what}, separated by commas."

# The ten fixed instances (the optimum and reference plan are computed, not written).
FIXED: dict[int, dict[str, Any]] = {
    1: {"items": [("tent", 5, 10), ("stove", 4, 40), ("rope", 6, 30), ("lamp", 3, 50)], "capacity": 10},
    2: {"jobs": [("A", 3, 1, None), ("B", 1, 1, None), ("C", 2, 1, None)], "before": []},
    3: {"points": [(0, 0), (2, 5), (6, 1), (5, 6), (1, 8)], "before": []},
    4: {
        "items": [
            ("map", 1, 6),
            ("radio", 4, 18),
            ("knife", 2, 9),
            ("kettle", 5, 21),
            ("tarp", 3, 13),
            ("flask", 6, 25),
        ],
        "capacity": 11,
    },
    5: {
        "jobs": [("A", 3, 1, None), ("B", 2, 1, 15), ("C", 5, 1, None), ("D", 1, 1, None), ("E", 4, 1, 8)],
        "before": [("C", "D"), ("A", "B")],
    },
    6: {"points": [(4, 4), (0, 1), (7, 0), (9, 6), (3, 9), (6, 8), (1, 5)], "before": [("Fir", "Birch")]},
    7: {
        "items": [
            ("tent", 9, 30),
            ("stove", 4, 15),
            ("rope", 3, 11),
            ("lamp", 2, 8),
            ("map", 1, 2),
            ("radio", 6, 22),
            ("knife", 5, 19),
            ("kettle", 7, 25),
            ("camera", 8, 29),
        ],
        "capacity": 20,
    },
    8: {
        "jobs": [
            ("A", 5, 2, None),
            ("B", 3, 1, 12),
            ("C", 2, 3, None),
            ("D", 7, 1, None),
            ("E", 1, 2, 20),
            ("F", 4, 4, None),
            ("G", 6, 1, 15),
        ],
        "before": [("D", "C"), ("A", "F"), ("B", "G")],
    },
    9: {
        "points": [(5, 5), (0, 0), (9, 1), (2, 7), (8, 8), (4, 0), (1, 3), (7, 4)],
        "before": [("Elm", "Ash"), ("Cedar", "Hazel")],
    },
    10: {
        "items": [
            ("tent", 12, 40),
            ("stove", 7, 24),
            ("rope", 5, 17),
            ("lamp", 3, 11),
            ("map", 1, 3),
            ("radio", 8, 29),
            ("knife", 4, 13),
            ("kettle", 9, 30),
            ("blanket", 6, 19),
            ("camera", 10, 35),
            ("tarp", 2, 5),
            ("compass", 11, 37),
        ],
        "capacity": 31,
    },
}


def _best(spec: dict[str, Any], candidates: Any) -> tuple[list[str], int]:
    """The first plan with the best objective among every feasible candidate."""
    best: tuple[list[str], int] | None = None
    for plan in candidates:
        violation, value = check_plan(list(plan), spec)
        if violation:
            continue
        if best is None or (value > best[1] if spec["kind"] in MAXIMISE else value < best[1]):
            best = (list(plan), value)
    if best is None:
        raise ValueError(f"planning: no feasible plan for {spec}")
    return best


def _knapsack(inst: dict[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    items = [{"name": n, "weight": w, "value": v} for n, w, v in inst["items"]]
    spec: dict[str, Any] = {"type": "plan", "kind": "knapsack", "items": items, "capacity": inst["capacity"]}
    names = [it["name"] for it in items]
    plan, spec["optimum"] = _best(
        spec, (c for r in range(len(names) + 1) for c in itertools.combinations(names, r))
    )
    table = "\n".join(f"- {it['name']}: {it['weight']} kg, worth {it['value']}" for it in items)
    question = (
        f"You are packing a bag that holds at most {inst['capacity']} kg. The available items:\n{table}\n"
        "Choose items (each at most once) so that the total weight is within the limit and the total worth is "
        f"as large as possible. {FORMAT.format(example='<item>, <item>, ...', what='the chosen items')}"
    )
    return question, spec, plan


def _schedule(inst: dict[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    jobs: list[dict[str, Any]] = []
    for name, duration, weight, deadline in inst["jobs"]:
        jobs.append({"name": name, "duration": duration, "weight": weight})
        if deadline is not None:
            jobs[-1]["deadline"] = deadline
    before = [list(pair) for pair in inst["before"]]
    spec: dict[str, Any] = {"type": "plan", "kind": "schedule", "jobs": jobs, "before": before}
    plan, spec["optimum"] = _best(spec, itertools.permutations([j["name"] for j in jobs]))
    weighted = any(j["weight"] != 1 for j in jobs)
    lines = [
        f"- job {j['name']}: takes {j['duration']} h"
        + (f", weight {j['weight']}" if weighted else "")
        + (f", must be finished by hour {j['deadline']}" if "deadline" in j else "")
        for j in jobs
    ]
    rules = "".join(f"Job {a} must run before job {b}.\n" for a, b in before)
    cost = "weight x completion time" if weighted else "completion times"
    question = (
        "One machine processes jobs one at a time, starting at hour 0, never idle between jobs. The jobs:\n"
        + "\n".join(lines)
        + f"\n{rules}Find the order that meets every rule and deadline and makes the sum of {cost} over all "
        f"jobs as small as possible. {FORMAT.format(example='<job>, <job>, ...', what='every job, in order')}"
    )
    return question, spec, plan


def _route(inst: dict[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    points = inst["points"]
    places = ["Depot", *PLACES[: len(points) - 1]]
    distance = [[abs(x1 - x2) + abs(y1 - y2) for x2, y2 in points] for x1, y1 in points]
    before = [list(pair) for pair in inst["before"]]
    spec: dict[str, Any] = {
        "type": "plan",
        "kind": "route",
        "start": "Depot",
        "places": places,
        "distance": distance,
    }
    spec["before"] = before
    plan, spec["optimum"] = _best(spec, (["Depot", *p, "Depot"] for p in itertools.permutations(places[1:])))
    header = "| | " + " | ".join(places) + " |\n|" + "---|" * (len(places) + 1) + "\n"
    rows = "\n".join(
        f"| {p} | " + " | ".join(map(str, row)) + " |" for p, row in zip(places, distance, strict=True)
    )
    rules = "".join(f"{a} must be visited before {b}.\n" for a, b in before)
    question = (
        "A courier starts at the Depot, visits every other place exactly once and returns to the Depot. Road "
        f"distances in km:\n{header}{rows}\n{rules}Find the shortest such tour that keeps every rule. "
        + FORMAT.format(example="Depot, <place>, ..., Depot", what="the tour from the Depot back to it")
    )
    return question, spec, plan


BUILD = {"knapsack": _knapsack, "schedule": _schedule, "route": _route}


def _problem(pid: str, level: int, inst: dict[str, Any]) -> Problem:
    kind = KIND_OF_LEVEL[level]
    question, spec, plan = BUILD[kind](inst)
    return Problem(
        id=pid, domain=NAME, question=question, reference="Plan: " + ", ".join(plan), grader=spec, level=level,
        source="mdr", meta={"kind": kind, "size": SIZE[level]},
    )  # fmt: skip


def items() -> list[Problem]:
    return [_problem(f"mdr-{NAME}-L{level}", level, FIXED[level]) for level in range(1, 11)]


def _random_instance(level: int, rng: random.Random) -> dict[str, Any]:
    n, kind = SIZE[level], KIND_OF_LEVEL[level]
    if kind == "knapsack":
        names = rng.sample(ITEM_NAMES, n)
        chosen = [(name, rng.randint(1, 12), rng.randint(2, 40)) for name in names]
        return {"items": chosen, "capacity": sum(w for _, w, _ in chosen) // 2}
    if kind == "schedule":
        names = [chr(ord("A") + i) for i in range(n)]
        order = rng.sample(names, n)  # a hidden feasible order: rules and deadlines are built from it
        before: set[tuple[str, str]] = set()
        while len(before) < RULES[level]:
            i, j = sorted(rng.sample(range(n), 2))
            before.add((order[i], order[j]))
        durations = {name: rng.randint(1, 8) for name in names}
        done = dict(zip(order, itertools.accumulate(durations[o] for o in order), strict=True))
        with_deadline = set(rng.sample(names, n // 2))
        jobs = [
            (name, durations[name], rng.randint(1, 4) if level >= 8 else 1,
             done[name] + rng.randint(0, 3) if name in with_deadline else None)
            for name in names
        ]  # fmt: skip
        return {"jobs": jobs, "before": sorted(before)}
    points = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(n + 1)]
    before = set()
    while len(before) < RULES[level]:
        a, b = rng.sample(PLACES[:n], 2)
        if (b, a) not in before:
            before.add((a, b))
    return {"points": points, "before": sorted(before)}


def generate(level: int, seed: int) -> Problem:
    rng = random.Random(f"mdr-{NAME}:{level}:{seed}")
    return _problem(f"mdr-{NAME}-L{level}-s{seed}", level, _random_instance(level, rng))


DOMAIN = Domain(NAME, items, generate)  # collected by base.MODULES, in report order
