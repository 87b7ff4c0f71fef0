"""mdr domain `math`: multi-step word problems and expressions, graded by math-verify (grader `math`).

One problem family per level, each needing more steps or larger numbers than the last:
1 change after a purchase · 2 fractions of a quantity · 3 an expression in fractions · 4 discount, tax and coupon ·
5 work rates with a drain · 6 a 2x2 linear system (tickets) · 7 a growing savings plan against a target ·
8 drawing without replacement · 9 counting with inclusion-exclusion · 10 dice sums that are prime.
Every answer is computed exactly (`fractions.Fraction`, or brute-force enumeration for counts and probabilities),
never written by hand. The fixed items use parameters written here; `generate` draws them from a seeded RNG.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from fractions import Fraction as F
from typing import Any

from branchmerge.evaluate.mdr.base import Domain
from branchmerge.records import Problem

NAME = "math"
FORMAT = (
    "Give the exact answer (an integer or a fraction in lowest terms, not a rounded decimal) as \\boxed{...} at "
    "the end."
)


def latex(x: F) -> str:
    """An exact answer as math-verify reads it: `12`, `\\frac{7}{12}`, `-\\frac{7}{12}`."""
    if x.denominator == 1:
        return str(x.numerator)
    return ("-" if x < 0 else "") + f"\\frac{{{abs(x.numerator)}}}{{{x.denominator}}}"


def _change(p: dict[str, Any]) -> tuple[str, F]:
    q = (
        f"Mia buys {p['a']} notebooks at ${p['pa']} each and {p['b']} pens at ${p['pb']} each. She pays with "
        f"${p['paid']}. How many dollars of change does she get?"
    )
    return q, F(p["paid"] - p["a"] * p["pa"] - p["b"] * p["pb"])


def _tank(p: dict[str, Any]) -> tuple[str, F]:
    full, used = F(p["n1"], p["d1"]), F(p["n2"], p["d2"])
    q = (
        f"A tank holds {p['v']} litres and is {full} full. In the morning {used} of the water in it is used, then "
        f"{p['add']} litres are added. How many litres are in the tank now?"
    )
    return q, p["v"] * full * (1 - used) + p["add"]


def _expression(p: dict[str, Any]) -> tuple[str, F]:
    a, b, c, d = (F(*p[k]) for k in "abcd")
    a_, b_, c_, d_ = (latex(x) if x >= 0 else f"\\left({latex(x)}\\right)" for x in (a, b, c, d))
    q = f"Compute exactly: $\\left({a_} + {b_}\\right) \\times {c_} - {d_}$."
    return q, (a + b) * c - d


def _shop(p: dict[str, Any]) -> tuple[str, F]:
    price = F(p["price"]) * (100 - p["off"]) / 100
    price = price * (100 + p["tax"]) / 100 - p["coupon"]
    q = (
        f"A jacket costs ${p['price']}. The shop takes {p['off']}% off, then adds {p['tax']}% sales tax on the "
        f"reduced price, and finally a ${p['coupon']} coupon is applied. What is the final price in dollars?"
    )
    return q, price


def _pipes(p: dict[str, Any]) -> tuple[str, F]:
    rate = F(1, p["a"]) + F(1, p["b"]) - F(1, p["c"])
    q = (
        f"Pipe A alone fills a pool in {p['a']} hours and pipe B alone in {p['b']} hours; the drain alone empties "
        f"the full pool in {p['c']} hours. Starting empty, with both pipes and the drain open, how many hours "
        "does the pool take to fill?"
    )
    return q, 1 / rate


def _tickets(p: dict[str, Any]) -> tuple[str, F]:
    n, revenue = p["adults"] + p["kids"], p["adults"] * p["pa"] + p["kids"] * p["pk"]
    q = (
        f"A theatre sells adult tickets at ${p['pa']} and child tickets at ${p['pk']}. One evening it sells {n} "
        f"tickets for ${revenue} in total. How many adult tickets did it sell?"
    )
    return q, F(p["adults"])


def _savings(p: dict[str, Any]) -> tuple[str, F]:
    total, month, deposit = 0, 0, p["first"]
    while total < p["target"]:
        month, total, deposit = month + 1, total + deposit, deposit + p["step"]
    q = (
        f"Leo saves ${p['first']} in month 1 and each month saves ${p['step']} more than the month before. In "
        f"which month does his total savings first reach at least ${p['target']}?"
    )
    return q, F(month)


def _draws(p: dict[str, Any]) -> tuple[str, F]:
    balls = ["red"] * p["red"] + ["green"] * p["green"] + ["blue"] * p["blue"]
    draws = list(itertools.combinations(range(len(balls)), p["k"]))
    same = sum(len({balls[i] for i in d}) == 1 for d in draws)
    q = (
        f"A bag holds {p['red']} red, {p['green']} green and {p['blue']} blue balls. You draw {p['k']} balls at "
        "random without replacement. What is the probability that they are all the same colour?"
    )
    return q, F(same, len(draws))


def _divisible(p: dict[str, Any]) -> tuple[str, F]:
    a, b, c, n = p["a"], p["b"], p["c"], p["n"]
    count = sum(1 for x in range(1, n + 1) if (x % a == 0 or x % b == 0) and x % c != 0)
    q = f"How many integers from 1 to {n} inclusive are divisible by {a} or by {b}, but not by {c}?"
    return q, F(count)


def _dice(p: dict[str, Any]) -> tuple[str, F]:
    def prime(s: int) -> bool:
        return s > 1 and all(s % d for d in range(2, int(s**0.5) + 1))

    rolls = list(itertools.product(range(1, p["faces"] + 1), repeat=p["k"]))
    q = (
        f"You roll {p['k']} fair dice, each with faces numbered 1 to {p['faces']}. What is the probability that "
        "the sum of the dice is a prime number?"
    )
    return q, F(sum(prime(sum(r)) for r in rolls), len(rolls))


def _sample(level: int, rng: random.Random) -> dict[str, Any]:
    r = rng.randint
    if level == 1:
        a, pa, b, pb = r(2, 6), r(2, 9), r(2, 6), r(1, 4)
        return {"a": a, "pa": pa, "b": b, "pb": pb, "paid": 10 * ((a * pa + b * pb) // 10 + r(1, 3))}
    if level == 2:
        d1, d2 = r(3, 8), r(3, 8)
        return {
            "v": 120 * r(1, 4),
            "n1": r(1, d1 - 1),
            "d1": d1,
            "n2": r(1, d2 - 1),
            "d2": d2,
            "add": r(5, 30),
        }
    if level == 3:
        return {k: (r(1, 9) * rng.choice([1, -1]), r(2, 12)) for k in "abcd"}
    if level == 4:
        return {"price": r(40, 300), "off": 5 * r(1, 8), "tax": r(3, 12), "coupon": r(2, 20)}
    if level == 5:
        a, b = r(2, 9), r(3, 12)
        return {"a": a, "b": b, "c": r(max(a, b) + 1, 30)}  # the drain is slower than either pipe
    if level == 6:
        pa = r(8, 20)
        return {"pa": pa, "pk": r(3, pa - 2), "adults": r(10, 90), "kids": r(10, 90)}
    if level == 7:
        return {"first": r(5, 40), "step": r(2, 15), "target": r(500, 3000)}
    if level == 8:
        return {"red": r(2, 6), "green": r(2, 6), "blue": r(1, 5), "k": rng.choice([2, 3])}
    if level == 9:
        a, b = rng.sample([2, 3, 5, 7, 11], 2)
        return {"a": a, "b": b, "c": rng.choice([4, 6, 9, 10, 12, 15]), "n": r(200, 2000)}
    return {"k": rng.choice([2, 3, 4]), "faces": r(4, 8)}


FAMILIES: dict[int, Callable[[dict[str, Any]], tuple[str, F]]] = {
    1: _change, 2: _tank, 3: _expression, 4: _shop, 5: _pipes,
    6: _tickets, 7: _savings, 8: _draws, 9: _divisible, 10: _dice,
}  # fmt: skip

FIXED: dict[int, dict[str, Any]] = {
    1: {"a": 3, "pa": 4, "b": 2, "pb": 3, "paid": 20},
    2: {"v": 240, "n1": 3, "d1": 4, "n2": 2, "d2": 5, "add": 15},
    3: {"a": (2, 3), "b": (-1, 4), "c": (6, 5), "d": (7, 10)},
    4: {"price": 80, "off": 15, "tax": 8, "coupon": 5},
    5: {"a": 4, "b": 6, "c": 8},
    6: {"pa": 12, "pk": 7, "adults": 37, "kids": 58},
    7: {"first": 20, "step": 5, "target": 1000},
    8: {"red": 4, "green": 3, "blue": 2, "k": 2},
    9: {"a": 3, "b": 5, "c": 4, "n": 500},
    10: {"k": 3, "faces": 6},
}


def _problem(pid: str, level: int, params: dict[str, Any]) -> Problem:
    question, answer = FAMILIES[level](params)
    return Problem(
        id=pid, domain=NAME, question=f"{question} {FORMAT}", reference=latex(answer), grader={"type": "math"},
        level=level, source="mdr", meta={"family": FAMILIES[level].__name__.lstrip("_")},
    )  # fmt: skip


def items() -> list[Problem]:
    return [_problem(f"mdr-{NAME}-L{level}", level, FIXED[level]) for level in range(1, 11)]


def generate(level: int, seed: int) -> Problem:
    rng = random.Random(f"mdr-{NAME}:{level}:{seed}")
    return _problem(f"mdr-{NAME}-L{level}-s{seed}", level, _sample(level, rng))


DOMAIN = Domain(NAME, items, generate)  # collected by base.MODULES, in report order
