"""mdr domain `causal`: causal reasoning with a given context: a described causal graph (a linear structural
model for the quantitative questions) and a question about it. Every reference is computed from the graph.

Levels: 1-2 "does intervening on X change Y" (a directed path, or none); 3 the confounder (the one common cause
of X and Y); 4 the collider (the one variable both X and Y cause); 5 the mediator (the one variable on every
causal path from X to Y); 6-7 the expected value of Y under do(X = x), at 7 with a confounder; 8-9 the total
causal effect of a unit increase in X (two or three paths, a confounder, an observational distractor at 9);
10 do(X = x) in a seven-variable model with several paths, a confounder and negative effects. Answers are given
on a last line `Answer: ...` and graded as in `science` (a word, or a number in any equal decimal form).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from fractions import Fraction as F

from branchmerge.evaluate.mdr.base import Domain
from branchmerge.evaluate.mdr.science import number_text, problem
from branchmerge.records import Problem

NAME = "causal"


@dataclass(frozen=True)
class Model:
    """A linear structural causal model: each variable = base + sum(coef * parent) + zero-mean noise. `order`
    is topological (parents first)."""

    order: tuple[str, ...]
    parents: dict[str, dict[str, F]]
    base: dict[str, F]

    def children(self, v: str) -> list[str]:
        return [c for c in self.order if v in self.parents[c]]

    def paths(self, x: str, y: str) -> list[list[str]]:
        """Every directed path from x to y."""
        if x == y:
            return [[y]]
        return [[x, *p] for c in self.children(x) for p in self.paths(c, y)]

    def ancestors(self, v: str) -> set[str]:
        return {a for p in self.parents[v] for a in {p} | self.ancestors(p)}

    def do_mean(self, do: dict[str, F]) -> dict[str, F]:
        """Expected value of every variable when the variables in `do` are set by intervention."""
        value: dict[str, F] = {}
        for v in self.order:
            value[v] = (
                do[v] if v in do else self.base[v] + sum(c * value[p] for p, c in self.parents[v].items())
            )
        return value

    def effect(self, x: str, y: str) -> F:
        return self.do_mean({x: F(1)})[y] - self.do_mean({x: F(0)})[y]


def confounders(m: Model, x: str, y: str) -> set[str]:
    """Common causes: variables with a causal path to x that avoids y and one to y that avoids x."""

    def reaches(c: str, target: str, avoid: str) -> bool:
        return any(avoid not in p for p in m.paths(c, target))

    common = (m.ancestors(x) & m.ancestors(y)) - {x, y}
    return {c for c in common if reaches(c, x, y) and reaches(c, y, x)}


def colliders(m: Model, x: str, y: str) -> set[str]:
    return set(m.children(x)) & set(m.children(y))


def mediators(m: Model, x: str, y: str) -> set[str]:
    paths = m.paths(x, y)
    return set.intersection(*(set(p[1:-1]) for p in paths)) if paths else set()


def model(spec: dict[str, dict[str, float]], base: dict[str, float] | None = None) -> Model:
    """A Model from {child: {parent: coef}} listed parents first (roots map to {})."""
    return Model(
        tuple(spec),
        {v: {p: F(c).limit_denominator() for p, c in ps.items()} for v, ps in spec.items()},
        {v: F((base or {}).get(v, 0)).limit_denominator() for v in spec},
    )


def equations(m: Model) -> str:
    def term(p: str, c: F) -> str:
        return f"{'-' if c < 0 else '+'} {number_text(abs(c))}·{p}"

    rows = [
        " ".join([f"{v} = {number_text(m.base[v])}", *(term(p, c) for p, c in m.parents[v].items())])
        for v in m.order
    ]
    return (
        "Each variable equals the listed constant plus the listed contributions plus its own independent noise "
        "term with mean zero; there are no other causes.\n" + "\n".join(f"- {r}" for r in rows)
    )


def links(m: Model) -> str:
    edges = [f"{p} directly causes {v}." for v in m.order for p in m.parents[v]]
    return " ".join(edges) + " There are no other causal links and no hidden common causes."


# ------------------------------------------------------------------------------------------- questions


def _ask(kind: str, m: Model, x: str, y: str, v: F = F(1)) -> tuple[str, str, str]:
    """(question, answer form, answer) for one query kind."""
    if kind == "affects":
        answer = "yes" if m.paths(x, y) else "no"
        return (
            f"If an intervention changes {x}, can {y} change as a result? Answer yes or no.",
            "word",
            answer,
        )
    if kind == "confounder":
        (c,) = confounders(m, x, y)
        return f"Which variable is a common cause (a confounder) of {x} and {y}?", "word", c
    if kind == "collider":
        (c,) = colliders(m, x, y)
        return f"Which variable is directly caused by both {x} and {y} (a collider)?", "word", c
    if kind == "mediator":
        (c,) = mediators(m, x, y)
        return f"Which variable lies on every causal path from {x} to {y}?", "word", c
    if kind == "do":
        q = f"If an intervention sets {x} to {number_text(v)}, overriding its usual causes, what is the expected value of {y}?"
        return q, "number", number_text(m.do_mean({x: v})[y])
    q = f"By how much does the expected value of {y} change when an intervention raises {x} by one unit?"
    return q, "number", number_text(m.effect(x, y))


# (story, model, query kind, x, y, intervention value), level 1..10
_FIXED: list[tuple[str, Model, str, str, str, float]] = [
    ("A lawn gets wet from rain or from a garden sprinkler.",
     model({"rain": {}, "sprinkler": {}, "wetness": {"rain": 1, "sprinkler": 1}}), "affects", "sprinkler", "rain", 1),
    ("A study of lung disease considers an inherited factor, smoking, tar deposits in the lungs and cancer.",
     model({"genes": {}, "smoking": {"genes": 1}, "tar": {"smoking": 1}, "cancer": {"tar": 1, "genes": 1}}),
     "affects", "smoking", "cancer", 1),
    ("A town notices that ice-cream sales and drownings rise and fall together over the year.",
     model({"temperature": {}, "sales": {"temperature": 1}, "swimmers": {"temperature": 1}, "drownings": {"swimmers": 1}}),
     "confounder", "sales", "drownings", 1),
    ("A selective college admits students based on their talent and their effort; admitted students then get a "
     "degree.", model({"talent": {}, "effort": {}, "admission": {"talent": 1, "effort": 1}, "degree": {"admission": 1}}),
     "collider", "talent", "effort", 1),
    ("An agronomist models how fertilizer affects a farm's harvest.",
     model({"fertilizer": {}, "rainfall": {}, "nitrogen": {"fertilizer": 1}, "growth": {"nitrogen": 1, "rainfall": 1},
            "harvest": {"growth": 1, "nitrogen": 1}}), "mediator", "fertilizer", "harvest", 1),
    ("A shop models how its supplier's cost drives its price and its weekly sales.",
     model({"cost": {}, "price": {"cost": 2}, "sales": {"price": -4}}, {"cost": 4, "price": 5, "sales": 100}),
     "do", "cost", "sales", 3),
    ("A retailer's demand and prices both follow the season (season = 2 in the week studied).",
     model({"season": {}, "demand": {"season": 5}, "price": {"season": 1}, "sales": {"demand": 3, "price": -2}},
           {"season": 2, "demand": 20, "price": 8, "sales": 10}), "do", "price", "sales", 10),
    ("An economist models income. Education raises income directly and through skills; an unmeasured ability "
     "raises both education and income.",
     model({"ability": {}, "education": {"ability": 2}, "skills": {"education": 3}, "income": {"education": 2, "skills": 1.5, "ability": 4}},
           {"ability": 1, "education": 10, "skills": 5, "income": 20}), "effect", "education", "income", 1),
    ("A health survey models exercise. In the survey data, each extra weekly hour of exercise goes with 7 more "
     "health points, but older people both exercise less and are less healthy.",
     model({"age": {}, "exercise": {"age": -0.1}, "fitness": {"exercise": 2}, "weight": {"exercise": -0.5},
            "health": {"fitness": 1.5, "weight": -2, "exercise": 1, "age": -0.5}},
           {"age": 40, "exercise": 8, "fitness": 10, "weight": 80, "health": 90}), "effect", "exercise", "health", 1),
    ("A city models a road toll. The season (2 in the month studied) affects the toll the council sets, traffic "
     "and asthma cases; wind clears pollution; the toll pushes people onto public transit.",
     model({"season": {}, "wind": {}, "toll": {"season": 1}, "transit": {"toll": 3},
            "traffic": {"toll": -6, "season": 4}, "pollution": {"traffic": 0.5, "wind": -2, "transit": -0.5},
            "asthma": {"pollution": 0.2, "season": 1}},
           {"season": 2, "wind": 3, "toll": 5, "transit": 20, "traffic": 100, "pollution": 10, "asthma": 2}),
     "do", "toll", "asthma", 10),
]  # fmt: skip


def _context(story: str, m: Model, kind: str) -> str:
    return f"{story}\n{equations(m) if kind in ('do', 'effect') else links(m)}"


def items() -> list[Problem]:
    out = []
    for level, (story, m, kind, x, y, v) in enumerate(_FIXED, start=1):
        question, form, answer = _ask(kind, m, x, y, F(v).limit_denominator())
        out.append(
            problem(NAME, f"mdr-{NAME}-L{level}", level, _context(story, m, kind), question, form, answer)
        )
    return out


# ------------------------------------------------------------------------------------------ generation

NAMES = (
    "pressure",
    "flow",
    "heat",
    "noise",
    "wear",
    "output",
    "cost",
    "speed",
    "load",
    "demand",
    "stock",
    "delay",
)
KIND = {1: "affects", 2: "affects", 3: "confounder", 4: "collider", 5: "mediator", 6: "do", 7: "do", 8: "effect", 9: "effect", 10: "do"}  # fmt: skip
SIZE = {1: 3, 2: 4, 3: 4, 4: 5, 5: 5, 6: 4, 7: 5, 8: 5, 9: 6, 10: 7}
COEFS = (-3, -2, -1, 1, 2, 3, F(1, 2), F(-1, 2))


def _random_model(level: int, rng: random.Random) -> Model:
    names = rng.sample(NAMES, SIZE[level])
    spec = {
        v: {p: F(rng.choice(COEFS)) for p in names[:i] if rng.random() < 0.5} for i, v in enumerate(names)
    }
    return Model(tuple(names), spec, {v: F(rng.randint(0, 10)) for v in names})


def _fits(level: int, m: Model, x: str, y: str, want_yes: bool) -> bool:
    kind = KIND[level]
    paths = m.paths(x, y)
    if kind == "affects":
        return bool(paths) == want_yes and (level == 1 or all(len(p) > 2 for p in paths))
    if kind == "confounder":
        return len(confounders(m, x, y)) == 1
    if kind == "collider":
        return len(colliders(m, x, y)) == 1
    if kind == "mediator":
        return len(mediators(m, x, y)) == 1 and len(paths) >= 2
    if kind == "effect" and m.effect(x, y) == 0:  # paths that cancel out would be a trick question
        return False
    min_paths = 2 if level >= 8 else 1
    return len(paths) >= min_paths and (level < 7 or len(confounders(m, x, y)) >= 1)


def generate(level: int, seed: int) -> Problem:
    rng = random.Random(f"mdr-{NAME}:{level}:{seed}")
    want_yes = rng.random() < 0.5
    while True:  # draw graphs until the query is well-posed (a few tries at most)
        m = _random_model(level, rng)
        pairs = [(x, y) for x, y in itertools.permutations(m.order, 2) if _fits(level, m, x, y, want_yes)]
        if pairs:
            break
    x, y = rng.choice(pairs)
    kind = KIND[level]
    v = F(rng.randint(-5, 10)) if level >= 10 else F(rng.randint(1, 10))
    story = "An engineer's causal model of a (hypothetical) production line links these quantities."
    if level == 9:
        story += f" In logged data, {y} rises by {rng.randint(2, 9)} for each unit of {x}."
    question, form, answer = _ask(kind, m, x, y, v)
    return problem(
        NAME, f"mdr-{NAME}-L{level}-s{seed}", level, _context(story, m, kind), question, form, answer
    )


DOMAIN = Domain(NAME, items, generate)  # collected by base.MODULES, in report order
