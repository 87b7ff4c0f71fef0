import pytest

from branchmerge.cot.verify import verify_traces
from branchmerge.graders import grade
from branchmerge.records import Problem, Trace


def test_exact_normalises_whitespace_only():
    assert grade(" 1  2\n3 ", "1 2 3", {"type": "exact"}).passed
    assert not grade("1 2 3 4", "1 2 3", {"type": "exact"}).passed
    assert not grade("ABC", "abc", {"type": "exact"}).passed
    assert grade("ABC", "abc", {"type": "exact", "case_sensitive": False}).passed
    assert not grade("", "", {"type": "exact"}).passed  # an empty answer never passes


def test_exact_extract_regex():
    spec = {"type": "exact", "extract": r"answer: (\w+)"}
    assert grade("so the answer: yes.", "yes", spec).passed
    g = grade("no idea", "yes", spec)
    assert not g.passed and "no match" in g.detail


def test_numeric_whole_answer_must_be_the_number():
    spec = {"type": "numeric"}
    assert grade("1,234", "1234", spec).passed
    assert grade("42.", "42", spec).passed
    assert grade("4.2e1", "42", spec).passed
    assert not grade("41", "42", spec).passed
    assert not grade("42 or 43", "42", spec).passed  # containing the number is not enough
    assert grade("0.1001", "0.1", {"type": "numeric", "abs_tol": 1e-3}).passed


def test_unknown_grader_names_the_known_ones():
    try:
        grade("x", "x", {"type": "nope"})
    except KeyError as e:
        assert "exact" in str(e) and "numeric" in str(e)
    else:
        raise AssertionError("expected KeyError")


def _trace(pid: str, sample: int, answer: str, **kw) -> Trace:
    return Trace(
        problem_id=pid,
        teacher=kw.pop("teacher", "t1"),
        model="m",
        sample=sample,
        temperature=0.6,
        answer=answer,
        **kw,
    )


def test_verify_keeps_correct_and_counts_each_reason():
    problems = {
        "a": Problem(id="a", domain="add", question="1+1?", reference="2", grader={"type": "numeric"}),
        "s": Problem(id="s", domain="sort", question="sort 2 1", reference="1 2"),
    }
    traces = [
        _trace("a", 0, "2"),
        _trace("a", 1, "3"),
        _trace("a", 2, "", finish_reason="length"),
        _trace("s", 0, "1 2"),
        _trace("s", 0, "", error="HTTP 400", teacher="t2"),
    ]
    kept, report = verify_traces(traces, problems)
    assert [(t.problem_id, t.sample) for t in kept] == [("a", 0), ("s", 0)]
    assert all(t.verified for t in kept)
    assert (report.kept, report.dropped) == (2, 3)
    rows = {(r["teacher"], r["domain"]): r for r in report.rows()}
    assert rows[("t1", "add")]["wrong"] == 1 and rows[("t1", "add")]["truncated"] == 1
    assert rows[("t1", "add")]["accuracy"] == round(1 / 3, 4)
    assert rows[("t2", "sort")]["error"] == 1


def test_verify_grades_math_code_and_choice_problems_with_their_graders():
    problems = {
        "m": Problem(
            id="m", domain="math", question="half?", reference="\\frac{1}{2}", grader={"type": "math"}
        ),
        "c": Problem(
            id="c",
            domain="code",
            question="write f",
            reference="",
            grader={"type": "code", "tests": ["assert f(2) == 4"]},
        ),
        "q": Problem(id="q", domain="science", question="which?", reference="B", grader={"type": "choice"}),
    }
    answers = [
        ("m", "\\boxed{0.5}"),
        ("m", "0.6"),
        ("c", "```python\ndef f(x):\n    return x * 2\n```"),
        ("c", "```python\ndef f(x):\n    return x + 3\n```"),
        ("q", "The answer is (B)."),
        ("q", "A"),
    ]
    traces = [
        Trace(problem_id=p, teacher="t", model="m", sample=i, temperature=0.6, answer=a)
        for i, (p, a) in enumerate(answers)
    ]
    kept, report = verify_traces(traces, problems)
    assert [t.sample for t in kept] == [0, 2, 4]
    # the code problem has no textual reference: its tests are the reference, so it is graded, not skipped
    assert {r["domain"]: (r["kept"], r["wrong"]) for r in report.rows()} == {
        "code": (1, 1),
        "math": (1, 1),
        "science": (1, 1),
    }


@pytest.mark.parametrize(
    ("answer", "reference", "passes"),
    [
        ("The answer is 18.", "18", True),
        ("\\boxed{18}", "18", True),
        ("She sells 9 eggs at $2 each.\n#### 18", "18", True),
        ("18 dollars", "18", True),
        ("So she makes 9 * 2 = $18 every day.", "18", True),
        ("It costs $1,500 in total.", "1500", True),
        ("\\boxed{\\$18.90}", "18.9", True),
        ("The answer is 5 apples + 3 pears = 8 fruits.", "8", True),  # the result after the last "="
        ("The answer is not 18, it's 20.", "18", False),  # a number after "not" is ruled out
        ("The answer is 18 or 20.", "18", False),  # two alternatives are no answer
        ("The answer is between 18 and 20.", "18", False),
        ("The answer is 18.5", "18", False),
        ("16 - 3 - 4 = 9, so the answer is 9.", "18", False),  # the last stated answer, not any number
        ("Let me see: \\boxed{18}</think>", "18", False),  # the only box is inside the thinking
        ("<think>It is \\boxed{18}", "18", False),  # cut off while thinking
    ],
)
def test_numeric_final_answer_mode_reads_the_final_statement(
    answer: str, reference: str, passes: bool
) -> None:
    assert grade(answer, reference, {"type": "numeric", "final": True}).passed is passes


def test_numeric_whole_answer_allows_currency_and_units_only():
    spec = {"type": "numeric"}
    assert grade("$18", "18", spec).passed
    assert grade("\\$18.90", "18.9", spec).passed
    assert grade("25%", "25", spec).passed
    assert not grade("18 or so", "18", spec).passed
    assert not grade("The answer is 18.", "18", spec).passed  # whole-answer mode wants the number alone
