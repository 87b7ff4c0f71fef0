"""mdr domain `logic`: knights and knaves, finishing orders and propositional entailment, checked exactly.

Level -> puzzle: knights and knaves with 2, 3, 4, 5 people (levels 2, 5, 8, 10); a finishing order of 3, 4, 6
runners (levels 1, 4, 7); does a conclusion follow from premises over 3, 4, 5 statements (levels 3, 6, 9, with 3,
4, 6 premises). Every puzzle is solved by brute force over all possible worlds (2^n kinds, n! orders, 2^n truth
assignments), and a puzzle is only used when its answer is unique, so the reference is right by construction.
The fixed items are puzzles written here by hand (the same solver checks them); `generate` adds random true clues
to a hidden world until exactly one world fits.

Answers are graded by the `regex` grader: the answer, or what follows its last "Answer:", must be exactly the
reference up to case, spacing and separators (`Ava=knight, Ben=knave`; `Cy, Ava, Ben`; `true`).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable
from typing import Any

from branchmerge.evaluate.mdr.base import Domain
from branchmerge.records import Problem

NAME = "logic"
PUZZLE = {1: ("order", 3), 2: ("knights", 2), 3: ("entail", 3), 4: ("order", 4), 5: ("knights", 3)}
PUZZLE |= {6: ("entail", 4), 7: ("order", 6), 8: ("knights", 4), 9: ("entail", 5), 10: ("knights", 5)}
PREMISES = {3: 3, 4: 4, 5: 6}  # premises per number of statements
PEOPLE = ("Ava", "Ben", "Cy", "Dee", "Eli", "Fay")
ATOMS = (
    ("it rains", "it does not rain"),
    ("the match is cancelled", "the match is not cancelled"),
    ("Kim takes the bus", "Kim does not take the bus"),
    ("the road is icy", "the road is not icy"),
    ("the shop opens", "the shop does not open"),
)
Clue = tuple[Any, ...]


def answer_pattern(parts: Iterable[str]) -> str:
    """Whole answer (or the text after its last "Answer:") = the parts, regex pieces joined by commas."""
    body = r"\s*[,;]\s*".join(parts)
    return rf"(?is)(?:.*\banswer\b[\s*]*:)?[\s*`]*{body}[\s*`.]*"


# Knights and knaves: world = {name: True for a knight}. Clues: ("is", X, kind) | ("same"/"diff", X, Y) |
# ("count", k) | ("and"/"or", X, kind, Y, kind).
def _holds_kk(clue: Clue, w: dict[str, bool]) -> bool:
    op = clue[0]
    if op == "is":
        return w[clue[1]] == (clue[2] == "knight")
    if op in ("same", "diff"):
        return (w[clue[1]] == w[clue[2]]) == (op == "same")
    if op == "count":
        return sum(w.values()) == clue[1]
    a, b = w[clue[1]] == (clue[2] == "knight"), w[clue[3]] == (clue[4] == "knight")
    return a and b if op == "and" else a or b


def _say_kk(speaker: str, clue: Clue) -> str:
    def be(x: str, kind: str) -> str:
        return f"I am a {kind}" if x == speaker else f"{x} is a {kind}"

    op = clue[0]
    if op == "is":
        text = be(clue[1], clue[2])
    elif op in ("same", "diff"):
        x, y = sorted(clue[1:3], key=lambda name: name == speaker)  # "Ben and I", not "I and Ben"
        relation = "the same kind" if op == "same" else "different kinds"
        text = f"{x} and {'I' if y == speaker else y} are {relation}"
    elif op == "count":
        text = f"exactly {clue[1]} of us {'is a knight' if clue[1] == 1 else 'are knights'}"
    else:
        text = f"{be(clue[1], clue[2])} {op} {be(clue[3], clue[4])}"
    return f'{speaker} says: "{text[0].upper()}{text[1:]}."'


def _knights(spec: dict[str, Any]) -> tuple[str, str, str]:
    says: dict[str, Clue] = {s: tuple(c) for s, c in spec["says"].items()}
    names = list(says)
    worlds = [
        dict(zip(names, kinds, strict=True)) for kinds in itertools.product([True, False], repeat=len(names))
    ]
    fits = [w for w in worlds if all(_holds_kk(c, w) == w[s] for s, c in says.items())]
    if len(fits) != 1:
        raise ValueError(f"logic: knights puzzle {spec} has {len(fits)} solutions, not 1")
    kinds = [(n, "knight" if fits[0][n] else "knave") for n in names]
    question = (
        f"On an island every inhabitant is a knight, who always tells the truth, or a knave, who always lies. "
        f"You meet {', '.join(names)}.\n"
        + "\n".join(_say_kk(s, c) for s, c in says.items())
        + "\nWhat is each of them? End with one line `Answer: "
        + ", ".join(f"{n}=<knight or knave>" for n in names)
        + "` in that order."
    )
    return (
        question,
        ", ".join(f"{n}={k}" for n, k in kinds),
        answer_pattern(rf"{n}\s*(?:[=:]|\s+is\s+an?\s+)\s*{k}" for n, k in kinds),
    )


# Finishing orders: world = a tuple of names, first place first. Clues: ("before"/"next", X, Y) |
# ("pos"/"notpos", X, k) | ("between", X, Y, Z).
def _holds_order(clue: Clue, order: tuple[str, ...]) -> bool:
    at = {n: i for i, n in enumerate(order)}
    op = clue[0]
    if op == "before":
        return at[clue[1]] < at[clue[2]]
    if op == "next":
        return at[clue[1]] + 1 == at[clue[2]]
    if op in ("pos", "notpos"):
        return (at[clue[1]] == clue[2] - 1) == (op == "pos")
    return min(at[clue[2]], at[clue[3]]) < at[clue[1]] < max(at[clue[2]], at[clue[3]])


def _say_order(clue: Clue, n: int) -> str:
    op = clue[0]
    place = {1: "first", n: "last"}.get(clue[2], f"in place {clue[2]}") if op in ("pos", "notpos") else ""
    return {
        "before": lambda: f"{clue[1]} finished ahead of {clue[2]}.",
        "next": lambda: f"{clue[1]} finished directly ahead of {clue[2]}.",
        "pos": lambda: f"{clue[1]} finished {place}.",
        "notpos": lambda: f"{clue[1]} did not finish {place}.",
        "between": lambda: f"{clue[1]} finished somewhere between {clue[2]} and {clue[3]}.",
    }[op]()


def _order(spec: dict[str, Any]) -> tuple[str, str, str]:
    names, clues = spec["names"], [tuple(c) for c in spec["clues"]]
    fits = [o for o in itertools.permutations(names) if all(_holds_order(c, o) for c in clues)]
    if len(fits) != 1:
        raise ValueError(f"logic: order puzzle {spec} has {len(fits)} solutions, not 1")
    question = (
        f"{', '.join(names)} ran a race; there were no ties.\n"
        + "\n".join(_say_order(c, len(names)) for c in clues)
        + "\nIn what order did they finish? End with one line `Answer: <first>, <second>, ...` naming all "
        f"{len(names)} runners from first to last."
    )
    return question, ", ".join(fits[0]), answer_pattern(fits[0])


# Entailment: literals are (atom, positive); premises ("if", L, L) | ("or", L, L) | ("fact", L) |
# ("ifand", L, L, L) | ("notboth", L, L); the conclusion is a "fact" or an "if".
def _lit(lit: list[Any] | tuple[Any, ...], v: tuple[bool, ...]) -> bool:
    return v[lit[0]] == lit[1]


def _holds_prop(f: Clue, v: tuple[bool, ...]) -> bool:
    op, ls = f[0], f[1:]
    if op == "fact":
        return _lit(ls[0], v)
    if op == "if":
        return not _lit(ls[0], v) or _lit(ls[1], v)
    if op == "or":
        return _lit(ls[0], v) or _lit(ls[1], v)
    if op == "ifand":
        return not (_lit(ls[0], v) and _lit(ls[1], v)) or _lit(ls[2], v)
    return not (_lit(ls[0], v) and _lit(ls[1], v))


def _say_prop(f: Clue) -> str:
    s = [ATOMS[a][0 if pos else 1] for a, pos in f[1:]]
    text = {
        "fact": lambda: s[0],
        "if": lambda: f"if {s[0]}, then {s[1]}",
        "or": lambda: f"{s[0]} or {s[1]} (or both)",
        "ifand": lambda: f"if {s[0]} and {s[1]}, then {s[2]}",
        "notboth": lambda: f"it is not the case that both {s[0]} and {s[1]}",
    }[f[0]]()
    return text[0].upper() + text[1:] + "."


def _follows(premises: list[Clue], conclusion: Clue, atoms: int) -> bool | None:
    """Whether `conclusion` holds in every world where all premises hold; None if no world does."""
    worlds = [
        v for v in itertools.product([True, False], repeat=atoms) if all(_holds_prop(p, v) for p in premises)
    ]
    return all(_holds_prop(conclusion, v) for v in worlds) if worlds else None


def _entail(spec: dict[str, Any]) -> tuple[str, str, str]:
    premises, conclusion = [tuple(p) for p in spec["premises"]], tuple(spec["conclusion"])
    result = _follows(premises, conclusion, spec["atoms"])
    if result is None:
        raise ValueError(f"logic: the premises of {spec} contradict each other")
    question = (
        "Assume all of the following premises are true.\n"
        + "\n".join(f"{i}. {_say_prop(p)}" for i, p in enumerate(premises, 1))
        + f"\nConclusion: {_say_prop(conclusion)}\nMust the conclusion be true, given only the premises? End with "
        "one line `Answer: true` if it must, or `Answer: false` if it need not be."
    )
    answer = "true" if result else "false"
    return question, answer, answer_pattern([answer])


BUILD = {"knights": _knights, "order": _order, "entail": _entail}

FIXED: dict[int, dict[str, Any]] = {
    1: {"names": ["Ava", "Ben", "Cy"], "clues": [("before", "Cy", "Ava"), ("notpos", "Ben", 1), ("before", "Ava", "Ben")]},
    2: {"says": {"Ava": ("diff", "Ava", "Ben"), "Ben": ("is", "Ava", "knave")}},
    3: {"atoms": 3, "premises": [("if", (0, True), (1, True)), ("if", (1, True), (2, False)), ("fact", (0, True))],
        "conclusion": ("fact", (2, False))},
    4: {"names": ["Ava", "Ben", "Cy", "Dee"],
        "clues": [("next", "Dee", "Ava"), ("before", "Ben", "Dee"), ("notpos", "Cy", 4), ("notpos", "Ben", 1)]},
    5: {"says": {"Ava": ("count", 1), "Ben": ("same", "Ava", "Cy"), "Cy": ("or", "Ava", "knave", "Ben", "knight")}},
    6: {"atoms": 4,
        "premises": [("or", (0, True), (3, True)), ("if", (0, True), (1, True)), ("notboth", (1, True), (2, True)),
                     ("fact", (2, True))],
        "conclusion": ("fact", (3, False))},
    7: {"names": ["Ava", "Ben", "Cy", "Dee", "Eli", "Fay"],
        "clues": [("between", "Cy", "Ava", "Fay"), ("next", "Fay", "Ben"), ("pos", "Eli", 3),
                  ("before", "Dee", "Ava"), ("notpos", "Dee", 1), ("before", "Ben", "Ava"), ("notpos", "Cy", 5)]},
    8: {"says": {"Ava": ("is", "Dee", "knave"), "Ben": ("and", "Ava", "knight", "Cy", "knight"),
                 "Cy": ("same", "Ava", "Dee"), "Dee": ("diff", "Ben", "Cy")}},
    9: {"atoms": 5,
        "premises": [("ifand", (0, True), (3, True), (1, True)), ("or", (0, True), (4, True)),
                     ("if", (4, True), (2, False)), ("fact", (2, True)), ("if", (2, True), (3, True)),
                     ("notboth", (1, True), (4, True))],
        "conclusion": ("if", (3, True), (1, False))},
    10: {"says": {"Ava": ("same", "Ben", "Eli"), "Ben": ("count", 2), "Cy": ("or", "Dee", "knave", "Ava", "knave"),
                  "Dee": ("is", "Cy", "knight"), "Eli": ("and", "Ben", "knave", "Dee", "knight")}},
}  # fmt: skip


def _problem(pid: str, level: int, spec: dict[str, Any]) -> Problem:
    kind, size = PUZZLE[level]
    question, answer, pattern = BUILD[kind](spec)
    return Problem(
        id=pid, domain=NAME, question=question, reference=answer, level=level, source="mdr",
        grader={"type": "regex", "pattern": pattern, "case_sensitive": False}, meta={"puzzle": kind, "size": size},
    )  # fmt: skip


def items() -> list[Problem]:
    return [_problem(f"mdr-{NAME}-L{level}", level, FIXED[level]) for level in range(1, 11)]


def _random_knights(n: int, rng: random.Random) -> dict[str, Any]:
    names = list(PEOPLE[:n])
    while True:
        truth = {p: rng.random() < 0.5 for p in names}
        says: dict[str, Clue] = {}
        for speaker in names:
            while True:
                x, y = rng.sample(names, 2) if n > 1 else (names[0], names[0])
                kx, ky = rng.choice(["knight", "knave"]), rng.choice(["knight", "knave"])
                op = rng.choice(["is", "is", "same", "diff", "count", "and", "or"])
                clue: Clue = {
                    "is": ("is", x, kx), "same": ("same", x, y), "diff": ("diff", x, y),
                    "count": ("count", rng.randint(0, n)), "and": ("and", x, kx, y, ky), "or": ("or", x, kx, y, ky),
                }[op]  # fmt: skip
                if _holds_kk(clue, truth) == truth[speaker]:
                    says[speaker] = clue
                    break
        spec = {"says": says}
        try:
            _knights(spec)
            return spec
        except ValueError:
            continue  # not unique: draw again


def _random_order(n: int, rng: random.Random) -> dict[str, Any]:
    names = list(PEOPLE[:n])
    hidden = tuple(rng.sample(names, n))
    left = list(itertools.permutations(names))
    clues: list[Clue] = []
    while len(left) > 1:
        x, y, z = rng.sample(names, 3)
        op = rng.choice(["before", "before", "next", "notpos", "between", "pos"])
        clue = {"before": ("before", x, y), "next": ("next", x, y), "pos": ("pos", x, rng.randint(1, n)),
                "notpos": ("notpos", x, rng.randint(1, n)), "between": ("between", x, y, z)}[op]  # fmt: skip
        narrowed = [o for o in left if _holds_order(clue, o)]
        if _holds_order(clue, hidden) and len(narrowed) < len(left):  # true, and it tells something new
            clues.append(clue)
            left = narrowed
    return {"names": names, "clues": clues}


def _random_entail(atoms: int, rng: random.Random) -> dict[str, Any]:
    want = rng.random() < 0.5

    def lits() -> list[tuple[int, bool]]:  # three literals over different statements
        return [(i, rng.random() < 0.7) for i in rng.sample(range(atoms), 3)]

    while True:
        premises: list[Clue] = []
        for _ in range(PREMISES[atoms]):
            a, b, c = lits()
            op = rng.choice(["if", "if", "or", "ifand", "notboth", "fact"])
            premises.append({"fact": ("fact", a), "ifand": ("ifand", a, b, c)}.get(op, (op, a, b)))
        for _ in range(20):
            a, b, _ = lits()
            conclusion = ("fact", a) if rng.random() < 0.5 else ("if", a, b)
            if conclusion not in premises and _follows(premises, conclusion, atoms) is want:
                return {"atoms": atoms, "premises": premises, "conclusion": conclusion}


def generate(level: int, seed: int) -> Problem:
    rng = random.Random(f"mdr-{NAME}:{level}:{seed}")
    kind, size = PUZZLE[level]
    make = {"knights": _random_knights, "order": _random_order, "entail": _random_entail}[kind]
    return _problem(f"mdr-{NAME}-L{level}-s{seed}", level, make(size, rng))


DOMAIN = Domain(NAME, items, generate)  # collected by base.MODULES, in report order
