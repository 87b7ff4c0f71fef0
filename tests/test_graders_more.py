"""The math, choice, regex, code and SQL graders, and grade_many."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest

from branchmerge.graders import grade
from branchmerge.graders.choice import extract_choice
from branchmerge.graders.parallel import grade_many
from branchmerge.graders.sql import has_top_level_order_by

MATH = {"type": "math"}


@pytest.mark.parametrize(
    "answer", ["\\boxed{1/2}", "0.5", "\\frac{1}{2}", "$\\frac{2}{4}$", "So it is \\boxed{0.50}."]
)
def test_math_equivalent_forms_pass(answer):
    assert grade(answer, "0.5", MATH).passed
    assert grade(answer, "\\frac{1}{2}", MATH).passed


def test_math_wrong_and_unparsable_answers_fail_with_a_detail():
    g = grade("\\boxed{0.6}", "1/2", MATH)
    assert not g.passed and "got" in g.detail and "want" in g.detail
    g = grade("I have no idea", "1/2", MATH)
    assert not g.passed and "could not parse" in g.detail
    assert not grade("", "1/2", MATH).passed
    assert grade("\\boxed{x^2 + 2x + 1}", "(x+1)^2", MATH).passed
    with pytest.raises(ValueError, match="reference"):
        grade("1", "no math here", MATH)


def test_math_grading_works_inside_a_thread():
    """math-verify's signal-based timeout raises outside the main thread; the grader turns it off there."""
    with ThreadPoolExecutor(2) as pool:
        grades = list(pool.map(lambda a: grade(a, "0.5", MATH), ["\\boxed{1/2}", "0.7"]))
    assert [g.passed for g in grades] == [True, False]


@pytest.mark.parametrize(
    ("answer", "chosen"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("The answer is B.", "B"),
        ("**B**", "B"),
        ("Answer: B) foo", "B"),
        ("answer: b", "B"),
        ("\\boxed{C}", "C"),
        ("The final answer is: **(C)**", "C"),
        ("A good choice is D", "D"),
        ("Between A and C, the answer is C", "C"),
        ("D. Paris", "D"),
    ],
)
def test_choice_extraction(answer, chosen):
    assert extract_choice(answer) == (chosen, "")
    assert grade(answer, chosen, {"type": "choice"}).passed


@pytest.mark.parametrize("answer", ["A or B", "Answer: A, C", "The answer is B or D.", "I pick (B) and (D)"])
def test_choice_two_different_options_are_ambiguous(answer):
    g = grade(answer, "B", {"type": "choice"})
    assert not g.passed and "ambiguous" in g.detail


def test_choice_wrong_missing_and_custom_choices():
    g = grade("The answer is C.", "B", {"type": "choice"})
    assert not g.passed and g.detail == "got C, want B"
    g = grade("E", "B", {"type": "choice"})
    assert not g.passed and "no option" in g.detail
    assert grade("E", "E", {"type": "choice", "choices": list("ABCDE")}).passed
    with pytest.raises(ValueError, match="not one of the choices"):
        grade("A", "E", {"type": "choice"})


def test_regex_fullmatch_with_spec_pattern_or_reference():
    spec = {"type": "regex", "pattern": r"-?0*\.50*"}
    assert grade(" 0.500 ", "ignored", spec).passed
    assert not grade("0.5 or 0.6", "ignored", spec).passed  # containing a match is not enough
    assert grade("yes", r"yes|y", {"type": "regex"}).passed  # no pattern: the reference is the pattern
    assert not grade("YES", r"yes", {"type": "regex"}).passed
    assert grade("YES", r"yes", {"type": "regex", "case_sensitive": False}).passed
    with pytest.raises(ValueError, match="not a valid regular expression"):
        grade("x", "(", {"type": "regex"})


ADD_TESTS = {"type": "code", "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}


def test_code_correct_solution_passes_and_wrong_one_names_the_test():
    answer = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    assert grade(answer, "", ADD_TESTS).passed
    g = grade("```python\ndef add(a, b):\n    return a + b if a > 0 else 1\n```", "", ADD_TESTS)
    assert not g.passed
    assert g.detail.startswith("test 1 failed: assert add(-1, 1) == 0")


def test_code_humaneval_check_function_and_entry_point():
    spec = {
        "type": "code",
        "entry_point": "add",
        "tests": "def check(candidate):\n    assert candidate(2, 2) == 4\n    assert candidate(0, 5) == 5\n",
    }
    assert grade("def add(x, y):\n    return x + y\n", "", spec).passed
    g = grade("def add(x, y):\n    return x * y\n", "", spec)
    assert not g.passed and "assert candidate(2, 2) == 4" not in g.detail
    assert "assert candidate(0, 5) == 5" in g.detail
    g = grade("def plus(x, y):\n    return x + y\n", "", spec)
    assert not g.passed and "no function 'add'" in g.detail


def test_code_timeouts_errors_and_early_exits_fail():
    g = grade("def add(a, b):\n    while True:\n        pass\n", "", {**ADD_TESTS, "timeout_s": 2})
    assert not g.passed and "timeout" in g.detail and "test 0" in g.detail
    g = grade("def add(a, b) return a", "", ADD_TESTS)
    assert not g.passed and "SyntaxError" in g.detail
    g = grade("import os\ndef add(a, b):\n    return a + b\nos._exit(0)\n", "", ADD_TESTS)
    assert not g.passed and "ended before the tests finished" in g.detail and "test 0" in g.detail


def test_code_stdin_tests_compare_whitespace_normalised_stdout():
    spec = {
        "type": "code",
        "stdin_tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "10 5", "output": "  15  "}],
    }
    assert grade("a, b = map(int, input().split())\nprint(a + b)\n", "", spec).passed
    g = grade("a, b = map(int, input().split())\nprint(a - b)\n", "", spec)
    assert not g.passed and g.detail.startswith("stdin test 0: got '-1', want '3'")
    g = grade("raise SystemExit(2)\n", "", spec)
    assert not g.passed and "stdin test 0: exit 2" in g.detail


SCHEMA = (
    "CREATE TABLE emp(id INTEGER, name TEXT, dept TEXT, salary REAL);"
    "INSERT INTO emp VALUES (1, 'ann', 'eng', 100.0), (2, 'bob', 'eng', 80.0), (3, 'cy', 'ops', 90.0);"
)
SQL = {"type": "sql", "schema": SCHEMA}


def test_sql_equal_result_sets_in_another_order_pass():
    ref = "SELECT name FROM emp WHERE dept = 'eng'"
    assert grade("```sql\nSELECT name FROM emp WHERE dept='eng' ORDER BY name DESC;\n```", ref, SQL).passed
    assert grade(
        "SELECT dept, AVG(salary) FROM emp GROUP BY dept", "SELECT 'ops', 90 UNION SELECT 'eng', 90", SQL
    ).passed


def test_sql_wrong_result_and_errors_fail_with_a_message():
    ref = "SELECT name FROM emp WHERE dept = 'eng'"
    g = grade("SELECT name FROM emp", ref, SQL)
    assert not g.passed and "got 3 rows, want 2" in g.detail and "('cy',)" in g.detail
    g = grade("SELEC name FROM emp", ref, SQL)
    assert not g.passed and g.detail == 'sqlite error: near "SELEC": syntax error'
    g = grade("DELETE FROM emp", ref, SQL)  # read-only: writes are refused, not run
    assert not g.passed and "not authorized" in g.detail
    with pytest.raises(ValueError, match="reference query failed"):
        grade("SELECT 1", "SELECT nope FROM emp", SQL)


def test_sql_order_by_in_the_reference_is_respected():
    ref = "SELECT name FROM emp ORDER BY salary DESC"
    assert grade("SELECT name FROM emp ORDER BY salary DESC", ref, SQL).passed
    g = grade("SELECT name FROM emp ORDER BY salary", ref, SQL)
    assert not g.passed and "another order" in g.detail
    assert has_top_level_order_by("SELECT a FROM t\norder  by a")
    assert not has_top_level_order_by("SELECT * FROM (SELECT a FROM t ORDER BY a) s")
    assert not has_top_level_order_by("SELECT 'order by' FROM t -- order by")


def test_sql_expected_rows_and_a_database_file(tmp_path):
    db = tmp_path / "shop.sqlite"
    with sqlite3.connect(db) as con:
        con.executescript(
            "CREATE TABLE item(name TEXT, price INT); INSERT INTO item VALUES ('pen', 2), ('ink', 5);"
        )
    con.close()
    before = db.read_bytes()
    spec = {"type": "sql", "db": str(db), "expected": [["ink"]]}
    assert grade("SELECT name FROM item WHERE price > 3", "", spec).passed
    assert not grade("SELECT name FROM item", "", spec).passed
    assert not grade("UPDATE item SET price = 0", "", spec).passed
    assert db.read_bytes() == before


def test_grade_many_keeps_order_and_matches_sequential_grading():
    items = [
        ("42", "42", {"type": "exact"}),
        ("\\boxed{1/2}", "0.5", MATH),
        ("B", "C", {"type": "choice"}),
        ("def add(a, b):\n    return a + b\n", "", ADD_TESTS),
        ("0.7", "0.5", MATH),
        ("SELECT name FROM emp", "SELECT name FROM emp WHERE dept = 'eng'", SQL),
        ("def add(a, b):\n    return a - b\n", "", ADD_TESTS),
        ("1,000", "1000", {"type": "numeric"}),
    ]
    sequential = [grade(*item) for item in items]
    assert [g.passed for g in sequential] == [True, True, False, True, False, False, False, True]
    assert grade_many(items, workers=2) == sequential
    assert grade_many(items, workers=1) == sequential
    with pytest.raises(KeyError, match="nope"):
        grade_many([("x", "x", {"type": "nope"})])


@pytest.mark.parametrize(
    ("answer", "reference", "passes"),
    [
        ("\\boxed{10\\sqrt{2}}", "10\\sqrt{2}", True),
        ("\\boxed{10}", "10\\sqrt{2}", False),  # a bare LaTeX reference used to be read as its last number
        ("\\boxed{[21, 71)}", "[21, 71)", True),
        ("\\boxed{71}", "[21, 71)", False),
        ("\\boxed{(x+18)^2}", "x^2 + 36x + 324", True),
        ("\\boxed{324}", "x^2 + 36x + 324", False),
        (
            "\\boxed{(3, \\frac{\\pi}{2})}",
            "\\left( 3, \\frac{\\pi}{2} \\right)",
            True,
        ),  # MATH500's first item
        ("\\boxed{3}", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
        ("10\\sqrt{2}", "10", False),  # and a bare answer as its last number
        ("The answer is 5.", "5", True),
        # a matrix or vector compares as a matrix, not as its last number
        (
            "\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}",
            "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
            True,
        ),
        ("\\boxed{2}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", False),
        (
            "\\boxed{\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}}",
            "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
            False,
        ),
        (
            "\\boxed{\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}}",
            "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
            False,
        ),
        # currency and units
        ("\\boxed{18.90}", "\\$18.90", True),
        ("The total is \\$18.90.", "\\$18.90", True),
        ("\\boxed{18.80}", "\\$18.90", False),
        ("\\boxed{5\\text{ cm}}", "5", True),
        # a box inside the thinking with nothing after </think> is no answer
        ("So \\boxed{18}</think>", "18", False),
        ("<think>So \\boxed{18}", "18", False),
        ("So \\boxed{17}</think>\n\n\\boxed{18}", "18", True),
    ],
)
def test_math_reads_bare_latex_whole_not_as_its_last_number(
    answer: str, reference: str, passes: bool
) -> None:
    assert grade(answer, reference, {"type": "math"}).passed is passes
