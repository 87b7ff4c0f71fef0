"""mdr domain `sql`: questions about a bundled shop database, answered with a SQLite query (grader `sql`).

The database is `data/shop.sql` (customers, products, orders, order_items; static data). Every item carries the
whole script in its grader spec, so the grader rebuilds the same database in its sandbox and compares the result
of the model's query with the result of the reference query (the reference query is the truth: no answer is
computed by hand). Questions name the columns to return, in order, and the row order where it matters.

Levels: 1 one-table filter · 2 filter + ORDER BY · 3 COUNT with a date condition · 4 GROUP BY with aggregates ·
5 a join with DISTINCT · 6 three-table join + GROUP BY · 7 GROUP BY + HAVING · 8 NOT IN subquery · 9 a CTE
compared with its own average · 10 a window function (ROW_NUMBER per partition). `generate` draws the constants
(categories, cities, years, thresholds) and keeps only draws whose reference query returns at least one row.
"""

from __future__ import annotations

import random
import re
import sqlite3
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

from branchmerge.evaluate.mdr.base import Domain, register
from branchmerge.records import Problem

NAME = "sql"
CATEGORIES = ("books", "games", "kitchen", "garden", "toys")
CITIES = ("Lisbon", "Porto", "Madrid", "Lyon", "Berlin")
STATUSES = ("shipped", "pending", "cancelled")
YEARS = (2023, 2024)
FORMAT = "Answer with one SQLite query in a ```sql fenced block."
Template = Callable[[dict[str, Any]], tuple[str, str]]  # params -> (question, reference query)


@cache
def shop_script() -> str:
    """The bundled database: CREATE TABLE statements, then the data."""
    return resources.files("branchmerge.evaluate.mdr").joinpath("data/shop.sql").read_text(encoding="utf-8")


def shop_schema() -> str:
    """The CREATE TABLE statements of the shop database (what the model is shown, without the rows)."""
    return "\n".join(re.findall(r"CREATE TABLE .*?\n\);", shop_script(), re.DOTALL))


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _filter(p: dict[str, Any]) -> tuple[str, str]:
    return (
        f"List the name and price of every product in the '{p['category']}' category that costs more than "
        f"{p['price']} euros. Return the columns name, price (any row order).",
        f"SELECT name, price FROM products WHERE category = {_q(p['category'])} AND price > {p['price']}",
    )


def _sorted(p: dict[str, Any]) -> tuple[str, str]:
    return (
        f"List the customers from {p['city']} who joined on or after {p['date']}: return the columns name, "
        "joined, earliest join date first (ties by name).",
        f"SELECT name, joined FROM customers WHERE city = {_q(p['city'])} AND joined >= {_q(p['date'])} "
        "ORDER BY joined, name",
    )


def _count(p: dict[str, Any]) -> tuple[str, str]:
    return (
        f"How many orders with status '{p['status']}' were placed on or after {p['start']} and before "
        f"{p['end']}? Return one row with one column: the count.",
        f"SELECT COUNT(*) FROM orders WHERE status = {_q(p['status'])} "
        f"AND order_date >= {_q(p['start'])} AND order_date < {_q(p['end'])}",
    )


def _grouped(p: dict[str, Any]) -> tuple[str, str]:
    return (
        f"For each product category, count the products priced at most {p['price']} euros and give their "
        "average price. Return the columns category, number of products, average price (unrounded), one row "
        "per category that has such products (any row order).",
        f"SELECT category, COUNT(*), AVG(price) FROM products WHERE price <= {p['price']} GROUP BY category",
    )


def _joined(p: dict[str, Any]) -> tuple[str, str]:
    return (
        f"List the names of the customers who have at least one order with status '{p['status']}' placed on or "
        f"after {p['start']} and before {p['end']}, each name once, in alphabetical order. Return one column: "
        "name.",
        "SELECT DISTINCT c.name FROM customers c JOIN orders o ON o.customer_id = c.id "
        f"WHERE o.status = {_q(p['status'])} AND o.order_date >= {_q(p['start'])} "
        f"AND o.order_date < {_q(p['end'])} ORDER BY c.name",
    )


def _revenue(p: dict[str, Any]) -> tuple[str, str]:
    return (
        "For each product category, compute the revenue (quantity x unit_price summed over order lines) of the "
        f"orders placed on or after {p['start']} and before {p['end']} that were not cancelled. Return the columns category, revenue "
        "(unrounded), highest revenue first (ties by category); leave out categories with no such sales.",
        "SELECT p.category, SUM(oi.quantity * oi.unit_price) AS revenue FROM order_items oi "
        "JOIN orders o ON o.id = oi.order_id JOIN products p ON p.id = oi.product_id "
        f"WHERE o.status <> 'cancelled' AND o.order_date >= {_q(p['start'])} AND o.order_date < {_q(p['end'])} "
        "GROUP BY p.category ORDER BY revenue DESC, p.category",
    )


def _having(p: dict[str, Any]) -> tuple[str, str]:
    return (
        f"Which customers placed at least {p['k']} orders in {p['year']} that were not cancelled? Return the "
        "columns name, number of such orders; most orders first (ties by name).",
        "SELECT c.name, COUNT(*) AS n FROM customers c JOIN orders o ON o.customer_id = c.id "
        f"WHERE o.status <> 'cancelled' AND strftime('%Y', o.order_date) = '{p['year']}' "
        f"GROUP BY c.id HAVING COUNT(*) >= {p['k']} ORDER BY n DESC, c.name",
    )


def _never(p: dict[str, Any]) -> tuple[str, str]:
    return (
        f"List the names of the products that no customer from {p['city']} ordered in {p['year']} (orders of "
        "any status count), in alphabetical order. Return one column: name.",
        "SELECT name FROM products WHERE id NOT IN (SELECT oi.product_id FROM order_items oi "
        "JOIN orders o ON o.id = oi.order_id JOIN customers c ON c.id = o.customer_id "
        f"WHERE c.city = {_q(p['city'])} AND strftime('%Y', o.order_date) = '{p['year']}') ORDER BY name",
    )


def _above_average(p: dict[str, Any]) -> tuple[str, str]:
    return (
        f"Consider the shipped orders placed on or after {p['start']} and before {p['end']}. A customer's spending is the sum of quantity x "
        "unit_price over the lines of their such orders. List the customers whose spending is greater than the "
        "average spending of the customers who have such orders. Return the columns name, spending "
        "(unrounded); highest spending first (ties by name).",
        "WITH spend AS (SELECT o.customer_id, SUM(oi.quantity * oi.unit_price) AS total FROM orders o "
        "JOIN order_items oi ON oi.order_id = o.id "
        f"WHERE o.status = 'shipped' AND o.order_date >= {_q(p['start'])} AND o.order_date < {_q(p['end'])} "
        "GROUP BY o.customer_id) "
        "SELECT c.name, s.total FROM spend s JOIN customers c ON c.id = s.customer_id "
        "WHERE s.total > (SELECT AVG(total) FROM spend) ORDER BY s.total DESC, c.name",
    )


def _window(p: dict[str, Any]) -> tuple[str, str]:
    return (
        f"Units sold = the sum of quantity over the lines of orders with status '{p['status']}' placed in "
        f"{p['year']}. For each "
        f"product category, rank its products that have units sold by units sold (1 = most units; ties broken "
        f"by product name, alphabetically) and keep the top {p['n']}. Return the columns category, product "
        "name, units sold, rank; ordered by category, then rank.",
        "SELECT category, name, units, rnk FROM (SELECT p.category, p.name, SUM(oi.quantity) AS units, "
        "ROW_NUMBER() OVER (PARTITION BY p.category ORDER BY SUM(oi.quantity) DESC, p.name) AS rnk "
        "FROM order_items oi JOIN orders o ON o.id = oi.order_id JOIN products p ON p.id = oi.product_id "
        f"WHERE o.status = {_q(p['status'])} AND strftime('%Y', o.order_date) = '{p['year']}' GROUP BY p.id) "
        f"WHERE rnk <= {p['n']} ORDER BY category, rnk",
    )


TEMPLATES: dict[int, Template] = {
    1: _filter, 2: _sorted, 3: _count, 4: _grouped, 5: _joined,
    6: _revenue, 7: _having, 8: _never, 9: _above_average, 10: _window,
}  # fmt: skip

FIXED: dict[int, dict[str, Any]] = {
    1: {"category": "kitchen", "price": 20},
    2: {"city": "Berlin", "date": "2022-09-01"},
    3: {"status": "shipped", "start": "2023-04-01", "end": "2023-10-01"},
    4: {"price": 30},
    5: {"status": "pending", "start": "2023-01-01", "end": "2024-01-01"},
    6: {"start": "2023-07-01", "end": "2024-07-01"},
    7: {"k": 3, "year": 2023},
    8: {"city": "Lyon", "year": 2023},
    9: {"start": "2023-01-01", "end": "2024-01-01"},
    10: {"status": "shipped", "n": 2, "year": 2023},
}


def _month(index: int) -> str:
    """The first day of month `index` counted from January 2023 (0), as 'YYYY-MM-DD'."""
    return f"{2023 + index // 12}-{index % 12 + 1:02d}-01"


def _sample(level: int, rng: random.Random) -> dict[str, Any]:
    start = rng.randrange(0, 20)
    span = {"start": _month(start), "end": _month(start + rng.randint(3, 12))}
    draw: dict[int, Callable[[], dict[str, Any]]] = {
        1: lambda: {"category": rng.choice(CATEGORIES), "price": rng.randrange(5, 60, 5)},
        2: lambda: {"city": rng.choice(CITIES), "date": f"{rng.choice([2022, 2023])}-{rng.randint(1, 12):02d}-01"},
        3: lambda: {"status": rng.choice(STATUSES), **span},
        4: lambda: {"price": rng.randrange(15, 80, 5)},
        5: lambda: {"status": rng.choice(STATUSES), **span},
        6: lambda: span,
        7: lambda: {"k": rng.randint(2, 4), "year": rng.choice(YEARS)},
        8: lambda: {"city": rng.choice(CITIES), "year": rng.choice(YEARS)},
        9: lambda: span,
        10: lambda: {"status": rng.choice(STATUSES[:2]), "n": rng.randint(1, 3), "year": rng.choice(YEARS)},
    }  # fmt: skip
    return draw[level]()


@cache
def _shop() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.executescript(shop_script())
    return db


def reference_rows(query: str) -> list[tuple[Any, ...]]:
    """Our own reference query on the bundled data, run here (trusted SQL; model SQL runs only in the grader)."""
    return _shop().execute(query).fetchall()


def _problem(pid: str, level: int, params: dict[str, Any]) -> Problem:
    question, query = TEMPLATES[level](params)
    text = f"A SQLite database has these tables:\n\n{shop_schema()}\n\n{question} {FORMAT}"
    return Problem(
        id=pid, domain=NAME, question=text, reference=query, grader={"type": "sql", "schema": shop_script()},
        level=level, source="mdr", meta={"template": TEMPLATES[level].__name__.lstrip("_"), "params": params},
    )  # fmt: skip


def items() -> list[Problem]:
    return [_problem(f"mdr-{NAME}-L{level}", level, FIXED[level]) for level in range(1, 11)]


def generate(level: int, seed: int) -> Problem:
    rng = random.Random(f"mdr-{NAME}:{level}:{seed}")
    while True:  # an empty result would let any query that returns nothing pass
        params = _sample(level, rng)
        rows = reference_rows(TEMPLATES[level](params)[1])
        if rows and rows != [(0,)]:
            return _problem(f"mdr-{NAME}-L{level}-s{seed}", level, params)


register(Domain(NAME, items, generate))
