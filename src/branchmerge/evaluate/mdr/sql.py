"""mdr domain `sql`: questions about a bundled shop database, answered with a SQLite query (grader `sql`).

The database is `data/shop.sql` (customers, products, orders, order_items; static data). Every item carries the
whole script in its grader spec, so the grader rebuilds the same database in its sandbox and compares the result
of the model's query with the result of the reference query (the reference query is the truth: no answer is
computed by hand). Questions name the columns to return, in order, and the row order where it matters.

Every item comes with near misses (`meta["near_misses"]`: a missing DISTINCT, `<` for `<=`, `>` for `>=`, a
reversed or different ORDER BY, `<> 'x'` for `= 'y'`, RANK for ROW_NUMBER, the list price for the price paid,
...), and an item is kept only when each near miss returns a result the grader tells apart from the reference's
(`undistinguished`). The data has rows on the boundaries and duplicates for this, and generated constants are
drawn from the data (prices, join dates, order dates), so the bounds of a question fall on rows.

Levels: 1 one-table filter · 2 filter + ORDER BY · 3 COUNT with a date condition · 4 GROUP BY with aggregates ·
5 a join with DISTINCT · 6 three-table join + GROUP BY · 7 GROUP BY + HAVING · 8 NOT IN subquery · 9 a CTE
compared with its own average · 10 a window function (ROW_NUMBER per partition). `generate` draws the constants
(categories, cities, years, thresholds) and keeps only draws whose reference query returns at least one row
and whose near misses all fail.
"""

from __future__ import annotations

import random
import re
import sqlite3
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

from branchmerge.evaluate.mdr.base import Domain
from branchmerge.graders.sql import has_top_level_order_by, same_result
from branchmerge.records import Problem

NAME = "sql"
CATEGORIES = ("books", "games", "kitchen", "garden", "toys")
CITIES = ("Lisbon", "Porto", "Madrid", "Lyon", "Berlin")
STATUSES = ("shipped", "pending", "cancelled")
YEARS = (2023, 2024)
FORMAT = "Answer with one SQLite query in a ```sql fenced block."
MAX_DRAWS = 2000
# params -> (question, reference query, near misses: label -> a plausible wrong query)
Template = Callable[[dict[str, Any]], tuple[str, str, dict[str, str]]]


@cache
def shop_script() -> str:
    """The bundled database: CREATE TABLE statements, then the data."""
    return resources.files("branchmerge.evaluate.mdr").joinpath("data/shop.sql").read_text(encoding="utf-8")


def shop_schema() -> str:
    """The CREATE TABLE statements of the shop database (what the model is shown, without the rows)."""
    return "\n".join(re.findall(r"CREATE TABLE .*?\n\);", shop_script(), re.DOTALL))


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _misses(query: str, edits: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Near-miss queries: `query` with one edit each (label -> (text, replacement); the text occurs once)."""
    out = {}
    for label, (old, new) in edits.items():
        if query.count(old) != 1:
            raise ValueError(f"near miss {label!r}: {old!r} occurs {query.count(old)} times in {query!r}")
        out[label] = query.replace(old, new)
    return out


def _span_misses(p: dict[str, Any], col: str) -> dict[str, tuple[str, str]]:
    """A date range's off-by-one bounds: > for >= at the start, <= for < at the end."""
    return {
        "> for >= at the start": (f"{col} >= {_q(p['start'])}", f"{col} > {_q(p['start'])}"),
        "<= for < at the end": (f"{col} < {_q(p['end'])}", f"{col} <= {_q(p['end'])}"),
    }


def _status_misses(status: str, col: str) -> dict[str, tuple[str, str]]:
    """`<> 'x'` for `= 'y'`: excluding one other status instead of asking for this one."""
    return {
        f"<> '{other}' for = '{status}'": (f"{col} = {_q(status)}", f"{col} <> {_q(other)}")
        for other in STATUSES
        if other != status
    }


def _filter(p: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    query = f"SELECT name, price FROM products WHERE category = {_q(p['category'])} AND price > {p['price']}"
    return (
        f"List the name and price of every product in the '{p['category']}' category that costs more than "
        f"{p['price']} euros. Return the columns name, price (any row order).",
        query,
        _misses(
            query,
            {
                ">= for >": ("price >", "price >="),
                "no category filter": (f"category = {_q(p['category'])} AND ", ""),
            },
        ),
    )


def _sorted(p: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    query = (
        f"SELECT name, joined FROM customers WHERE city = {_q(p['city'])} AND joined >= {_q(p['date'])} "
        "ORDER BY joined, name"
    )
    edits = {
        "> for >=": ("joined >=", "joined >"),
        "ordered by name first": ("ORDER BY joined, name", "ORDER BY name, joined"),
        "latest first": ("ORDER BY joined, name", "ORDER BY joined DESC, name"),
        "no tie-break by name": ("ORDER BY joined, name", "ORDER BY joined, name DESC"),
    }
    return (
        f"List the customers from {p['city']} who joined on or after {p['date']}: return the columns name, "
        "joined, earliest join date first (ties by name).",
        query,
        _misses(query, edits),
    )


def _count(p: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    query = (
        f"SELECT COUNT(*) FROM orders WHERE status = {_q(p['status'])} "
        f"AND order_date >= {_q(p['start'])} AND order_date < {_q(p['end'])}"
    )
    return (
        f"How many orders with status '{p['status']}' were placed on or after {p['start']} and before "
        f"{p['end']}? Return one row with one column: the count.",
        query,
        _misses(query, _span_misses(p, "order_date") | _status_misses(p["status"], "status")),
    )


def _grouped(p: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    query = (
        f"SELECT category, COUNT(*), AVG(price) FROM products WHERE price <= {p['price']} GROUP BY category"
    )
    edits = {
        "< for <=": ("price <=", "price <"),
        "distinct prices counted": ("COUNT(*)", "COUNT(DISTINCT price)"),
    }
    return (
        f"For each product category, count the products priced at most {p['price']} euros and give their "
        "average price. Return the columns category, number of products, average price (unrounded), one row "
        "per category that has such products (any row order).",
        query,
        _misses(query, edits),
    )


def _joined(p: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    query = (
        "SELECT DISTINCT c.name FROM customers c JOIN orders o ON o.customer_id = c.id "
        f"WHERE o.status = {_q(p['status'])} AND o.order_date >= {_q(p['start'])} "
        f"AND o.order_date < {_q(p['end'])} ORDER BY c.name"
    )
    edits = {
        "no DISTINCT": ("SELECT DISTINCT", "SELECT"),
        "reverse order": ("ORDER BY c.name", "ORDER BY c.name DESC"),
    }
    return (
        f"List the names of the customers who have at least one order with status '{p['status']}' placed on or "
        f"after {p['start']} and before {p['end']}, each name once, in alphabetical order. Return one column: "
        "name.",
        query,
        _misses(query, edits | _span_misses(p, "o.order_date") | _status_misses(p["status"], "o.status")),
    )


def _revenue(p: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    query = (
        "SELECT p.category, SUM(oi.quantity * oi.unit_price) AS revenue FROM order_items oi "
        "JOIN orders o ON o.id = oi.order_id JOIN products p ON p.id = oi.product_id "
        f"WHERE o.status <> 'cancelled' AND o.order_date >= {_q(p['start'])} AND o.order_date < {_q(p['end'])} "
        "GROUP BY p.category ORDER BY revenue DESC, p.category"
    )
    edits = {
        "= 'shipped' for <> 'cancelled'": ("o.status <> 'cancelled'", "o.status = 'shipped'"),
        "list price for the price paid": ("oi.quantity * oi.unit_price", "oi.quantity * p.price"),
        "lowest revenue first": ("ORDER BY revenue DESC", "ORDER BY revenue"),
    }
    return (
        "For each product category, compute the revenue (quantity x unit_price summed over order lines) of the "
        f"orders placed on or after {p['start']} and before {p['end']} that were not cancelled. Return the "
        "columns category, revenue (unrounded), highest revenue first (ties by category); leave out categories "
        "with no such sales.",
        query,
        _misses(query, edits | _span_misses(p, "o.order_date")),
    )


def _having(p: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    query = (
        "SELECT c.name, COUNT(*) AS n FROM customers c JOIN orders o ON o.customer_id = c.id "
        f"WHERE o.status <> 'cancelled' AND strftime('%Y', o.order_date) = '{p['year']}' "
        f"GROUP BY c.id HAVING COUNT(*) >= {p['k']} ORDER BY n DESC, c.name"
    )
    edits = {
        "> for >=": ("COUNT(*) >=", "COUNT(*) >"),
        "= 'shipped' for <> 'cancelled'": ("o.status <> 'cancelled'", "o.status = 'shipped'"),
        "fewest orders first": ("ORDER BY n DESC", "ORDER BY n"),
    }
    return (
        f"Which customers placed at least {p['k']} orders in {p['year']} that were not cancelled? Return the "
        "columns name, number of such orders; most orders first (ties by name).",
        query,
        _misses(query, edits),
    )


def _never(p: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    query = (
        "SELECT name FROM products WHERE id NOT IN (SELECT oi.product_id FROM order_items oi "
        "JOIN orders o ON o.id = oi.order_id JOIN customers c ON c.id = o.customer_id "
        f"WHERE c.city = {_q(p['city'])} AND strftime('%Y', o.order_date) = '{p['year']}') ORDER BY name"
    )
    edits = {
        "cancelled orders left out": ("WHERE c.city", "WHERE o.status <> 'cancelled' AND c.city"),
        "any year": (f" AND strftime('%Y', o.order_date) = '{p['year']}'", ""),
        "any city": (f"c.city = {_q(p['city'])} AND ", ""),
    }
    return (
        f"List the names of the products that no customer from {p['city']} ordered in {p['year']} (orders of "
        "any status count), in alphabetical order. Return one column: name.",
        query,
        _misses(query, edits),
    )


def _above_average(p: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    query = (
        "WITH spend AS (SELECT o.customer_id, SUM(oi.quantity * oi.unit_price) AS total FROM orders o "
        "JOIN order_items oi ON oi.order_id = o.id "
        f"WHERE o.status = 'shipped' AND o.order_date >= {_q(p['start'])} AND o.order_date < {_q(p['end'])} "
        "GROUP BY o.customer_id) "
        "SELECT c.name, s.total FROM spend s JOIN customers c ON c.id = s.customer_id "
        "WHERE s.total > (SELECT AVG(total) FROM spend) ORDER BY s.total DESC, c.name"
    )
    edits = {
        "<> 'cancelled' for = 'shipped'": ("o.status = 'shipped'", "o.status <> 'cancelled'"),
        "average over order lines": (
            "(SELECT AVG(total) FROM spend)",
            "(SELECT AVG(quantity * unit_price) FROM order_items)",
        ),
        "lowest spending first": ("ORDER BY s.total DESC", "ORDER BY s.total"),
    }
    return (
        f"Consider the shipped orders placed on or after {p['start']} and before {p['end']}. A customer's "
        "spending is the sum of quantity x unit_price over the lines of their such orders. List the customers "
        "whose spending is greater than the average spending of the customers who have such orders. Return the "
        "columns name, spending (unrounded); highest spending first (ties by name).",
        query,
        _misses(query, edits | _span_misses(p, "o.order_date")),
    )


def _window(p: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    query = (
        "SELECT category, name, units, rnk FROM (SELECT p.category, p.name, SUM(oi.quantity) AS units, "
        "ROW_NUMBER() OVER (PARTITION BY p.category ORDER BY SUM(oi.quantity) DESC, p.name) AS rnk "
        "FROM order_items oi JOIN orders o ON o.id = oi.order_id JOIN products p ON p.id = oi.product_id "
        f"WHERE o.status = {_q(p['status'])} AND strftime('%Y', o.order_date) = '{p['year']}' GROUP BY p.id) "
        f"WHERE rnk <= {p['n']} ORDER BY category, rnk"
    )
    edits = {
        "RANK for ROW_NUMBER": (
            "ROW_NUMBER() OVER (PARTITION BY p.category ORDER BY SUM(oi.quantity) DESC, p.name)",
            "RANK() OVER (PARTITION BY p.category ORDER BY SUM(oi.quantity) DESC)",
        ),
        "ties by name reversed": ("DESC, p.name)", "DESC, p.name DESC)"),
        "< for <=": ("rnk <=", "rnk <"),
    }
    return (
        f"Units sold = the sum of quantity over the lines of orders with status '{p['status']}' placed in "
        f"{p['year']}. For each product category, rank its products that have units sold by units sold (1 = "
        "most units; ties broken by product name, alphabetically) and keep the top "
        f"{p['n']}. Return the columns category, product name, units sold, rank; ordered by category, then rank.",
        query,
        _misses(query, edits | _status_misses(p["status"], "o.status")),
    )


TEMPLATES: dict[int, Template] = {
    1: _filter, 2: _sorted, 3: _count, 4: _grouped, 5: _joined,
    6: _revenue, 7: _having, 8: _never, 9: _above_average, 10: _window,
}  # fmt: skip

FIXED: dict[int, dict[str, Any]] = {
    1: {"category": "kitchen", "price": 24.0},
    2: {"city": "Lisbon", "date": "2022-01-14"},
    3: {"status": "shipped", "start": "2023-04-01", "end": "2023-10-01"},
    4: {"price": 26.0},
    5: {"status": "pending", "start": "2023-07-01", "end": "2024-09-26"},
    6: {"start": "2023-07-01", "end": "2024-07-01"},
    7: {"k": 3, "year": 2023},
    8: {"city": "Lyon", "year": 2024},
    9: {"start": "2023-02-20", "end": "2023-12-13"},
    10: {"status": "shipped", "n": 2, "year": 2023},
}


def _data(query: str) -> list[Any]:
    return sorted({row[0] for row in reference_rows(query)})


def _sample(level: int, rng: random.Random) -> dict[str, Any]:
    """Constants drawn from the data itself, so that the bounds of the question fall on rows of the database."""
    dates = _data("SELECT order_date FROM orders")
    i = rng.randrange(0, len(dates) - 4)
    span = {"start": dates[i], "end": dates[rng.randrange(i + 3, min(i + 30, len(dates)))]}
    city, category = rng.choice(CITIES), rng.choice(CATEGORIES)
    draw: dict[int, Callable[[], dict[str, Any]]] = {
        1: lambda: {"category": category, "price": rng.choice(_data(f"SELECT price FROM products WHERE category = {_q(category)}"))},
        2: lambda: {"city": city, "date": rng.choice(_data(f"SELECT joined FROM customers WHERE city = {_q(city)}"))},
        3: lambda: {"status": rng.choice(STATUSES), **span},
        4: lambda: {"price": rng.choice(_data("SELECT price FROM products"))},
        5: lambda: {"status": rng.choice(STATUSES), **span},
        6: lambda: span,
        7: lambda: {"k": rng.randint(2, 4), "year": rng.choice(YEARS)},
        8: lambda: {"city": city, "year": rng.choice(YEARS)},
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


def undistinguished(level: int, params: dict[str, Any]) -> list[str]:
    """The near misses of this item whose result the grader would accept (the same rows, compared as
    `graders.sql` compares them), plus "empty" when the reference returns nothing or a zero count: an item is
    kept only when this is empty, so each near miss fails."""
    _, query, misses = TEMPLATES[level](params)
    want = reference_rows(query)
    ordered = has_top_level_order_by(query)
    same = ["empty"] if want in ([], [(0,)]) else []
    return same + [k for k, q in misses.items() if same_result(reference_rows(q), want, ordered)]


def _problem(pid: str, level: int, params: dict[str, Any]) -> Problem:
    question, query, misses = TEMPLATES[level](params)
    text = f"A SQLite database has these tables:\n\n{shop_schema()}\n\n{question} {FORMAT}"
    meta = {"template": TEMPLATES[level].__name__.lstrip("_"), "params": params, "near_misses": misses}
    return Problem(
        id=pid, domain=NAME, question=text, reference=query, grader={"type": "sql", "schema": shop_script()},
        level=level, source="mdr", meta=meta,
    )  # fmt: skip


def items() -> list[Problem]:
    return [_problem(f"mdr-{NAME}-L{level}", level, FIXED[level]) for level in range(1, 11)]


def generate(level: int, seed: int) -> Problem:
    rng = random.Random(f"mdr-{NAME}:{level}:{seed}")
    for _ in range(MAX_DRAWS):
        params = _sample(level, rng)
        if params != FIXED[level] and not undistinguished(level, params):  # fresh: never the fixed item
            return _problem(f"mdr-{NAME}-L{level}-s{seed}", level, params)
    raise RuntimeError(f"mdr sql: no draw of level {level} (seed {seed}) tells every near miss apart")


DOMAIN = Domain(NAME, items, generate)  # collected by base.MODULES, in report order
