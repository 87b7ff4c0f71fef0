"""Standard-set loaders: tiny files in each published layout (JSONL, Parquet, CSV, a `save_to_disk` folder) become
the Problems we expect, graded by the graders they name; bad files give errors naming the file, row and column."""

from __future__ import annotations

import base64
import json
import pickle
import zlib
from pathlib import Path
from typing import Any

import pytest

from branchmerge.errors import BranchmergeError
from branchmerge.evaluate.loaders import load_set
from branchmerge.graders import grade


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# --- math sets ------------------------------------------------------------------------------------------------


def test_math500_jsonl_and_the_original_math_layout(tmp_path: Path) -> None:
    rows = [
        {
            "problem": "Compute $1/2 + 1/4$.",
            "solution": "... $\\boxed{\\frac34}$",
            "answer": "\\frac{3}{4}",
            "subject": "Prealgebra",
            "level": 2,
            "unique_id": "test/prealgebra/1.json",
        },
        {
            "problem": "Solve $x+1=3$.",
            "solution": "x=2",
            "answer": "2",
            "subject": "Algebra",
            "level": "Level 5",
            "unique_id": "test/algebra/7.json",
        },
    ]
    problems = load_set("MATH500", write_jsonl(tmp_path / "test.jsonl", rows))
    assert [(p.id, p.domain, p.reference, p.level, p.grader) for p in problems] == [
        ("test/prealgebra/1.json", "math", "\\frac{3}{4}", 2, {"type": "math"}),
        ("test/algebra/7.json", "math", "2", 5, {"type": "math"}),
    ]
    assert problems[0].meta["subject"] == "Prealgebra" and problems[0].source == "math500"
    assert grade("The answer is $\\boxed{0.75}$", problems[0].reference, problems[0].grader).passed
    # hendrycks MATH: no answer column, "type" for the subject, nested braces inside \boxed{}
    original = [
        {"problem": "p", "solution": "so $\\boxed{\\frac{1}{2}}$.", "type": "Algebra", "level": "Level ?"}
    ]
    (p,) = load_set("math", write_parquet(tmp_path / "math.parquet", original))
    assert (p.reference, p.level, p.meta["subject"], p.id) == ("\\frac{1}{2}", None, "Algebra", "math500-0")


def test_aime_variants_integer_answers_and_id_prefix(tmp_path: Path) -> None:
    h4 = [{"id": 60, "problem": "Find N.", "answer": "033", "year": 2024}]
    (a,) = load_set("aime2024", write_jsonl(tmp_path / "a.jsonl", h4))
    assert (a.id, a.reference, a.grader, a.meta["year"]) == ("aime2024-60", "33", {"type": "math"}, 2024)
    maxwell = [{"ID": "2024-II-4", "Problem": "Find m+n.", "Answer": 116}]
    (b,) = load_set("AIME_2024", write_parquet(tmp_path / "b.parquet", maxwell))
    assert (b.id, b.question, b.reference) == ("2024-II-4", "Find m+n.", "116")
    (c,) = load_set("aime2025", write_jsonl(tmp_path / "c.jsonl", [{"question": "Q?", "answer": "70"}]))
    assert (c.id, c.domain) == ("aime2025-0", "math")
    assert grade("\\boxed{70}", c.reference, c.grader).passed
    bad = write_jsonl(tmp_path / "bad.jsonl", [*h4, {"id": 61, "problem": "Q", "answer": "12.5"}])
    with pytest.raises(
        BranchmergeError, match=r"bad\.jsonl: row 1: column 'answer': AIME answers are integers"
    ):
        load_set("aime2024", bad)


def test_gsm8k_reference_is_the_number_after_the_hashes(tmp_path: Path) -> None:
    rows = [
        {"question": "How many?", "answer": "3 * 4 = <<3*4=12>>12\n#### 12"},
        {"question": "How much?", "answer": "It costs 1,000 + 234.\n####  1,234"},
    ]
    problems = load_set("gsm8k", write_jsonl(tmp_path / "test.jsonl", rows))
    assert [(p.id, p.reference, p.grader["type"]) for p in problems] == [
        ("gsm8k-0", "12", "numeric"),
        ("gsm8k-1", "1234", "numeric"),
    ]
    assert problems[1].meta["solution"] == "It costs 1,000 + 234."
    assert grade("1,234", problems[1].reference, problems[1].grader).passed
    assert not grade("1235", problems[1].reference, problems[1].grader).passed
    # The question asks for a final answer, and prose answers are read for their final number.
    assert problems[0].question.startswith("How many?") and "\\boxed{}" in problems[0].question
    assert grade("Three boxes of four: the answer is 12.", "12", problems[0].grader).passed
    assert grade("So it is \\boxed{1,234} dollars.", problems[1].reference, problems[1].grader).passed
    bad = write_jsonl(tmp_path / "bad.jsonl", [rows[0], {"question": "q", "answer": "just 5"}])
    with pytest.raises(BranchmergeError, match=r"bad\.jsonl: row 1: column 'answer': no '#### N'"):
        load_set("gsm8k", bad)


# --- GPQA -----------------------------------------------------------------------------------------------------


def _gpqa_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "Record ID": f"rec{i:03d}",
            "Question": f"Which particle {i}?",
            "Correct Answer": f" right {i}\n",
            "Incorrect Answer 1": f"wrong {i}a",
            "Incorrect Answer 2": f"wrong {i}b",
            "Incorrect Answer 3": f"wrong {i}c",
            "High-level domain": "Physics",
            "Subdomain": "Quantum Mechanics",
        }
        for i in range(n)
    ]


def test_gpqa_shuffles_options_deterministically_and_the_letter_points_at_the_correct_text(
    tmp_path: Path,
) -> None:
    path = write_parquet(tmp_path / "gpqa_diamond.parquet", _gpqa_rows(12))
    problems = load_set("gpqa-diamond", path, seed=0)
    assert load_set("gpqa", path, seed=0) == problems  # a rerun is identical
    for i, p in enumerate(problems):
        assert p.domain == "science" and p.grader == {"type": "choice", "choices": ["A", "B", "C", "D"]}
        assert p.meta["choices"][p.reference] == f"right {i}" == p.meta["correct_answer"]
        assert sorted(p.meta["choices"].values()) == sorted([f"right {i}"] + [f"wrong {i}{x}" for x in "abc"])
        lines = p.question.splitlines()
        assert lines[0] == f"Which particle {i}?"
        assert lines[-6:-2] == [f"{k}) {p.meta['choices'][k]}" for k in "ABCD"]
        assert "letter of the correct option" in lines[-1]
        assert grade(f"The answer is ({p.reference}).", p.reference, p.grader).passed
    assert len({p.reference for p in problems}) > 1  # the correct letter is not always A
    assert len({tuple(p.meta["choices"].values()) for p in problems}) > 1  # permutations vary across items
    other = load_set("gpqa-diamond", path, seed=1)
    assert [p.reference for p in other] != [p.reference for p in problems]
    assert all(o.meta["choices"][o.reference] == o.meta["correct_answer"] for o in other)
    # a file sorted differently gives each item the same permutation (seeded by item id, not row number)
    reordered = load_set("gpqa-diamond", write_jsonl(tmp_path / "r.jsonl", _gpqa_rows(12)[::-1]), seed=0)
    assert {p.id: p.reference for p in reordered} == {p.id: p.reference for p in problems}


def test_gpqa_csv_with_renamed_columns_through_a_mapping(tmp_path: Path) -> None:
    import csv

    rows = [{k.lower().replace(" ", "_"): v for k, v in r.items()} for r in _gpqa_rows(2)]
    with open(tmp_path / "g.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    renames = {c: c.lower().replace(" ", "_") for c in ["Question", "Correct Answer", "Record ID"]}
    renames |= {f"Incorrect Answer {k}": f"incorrect_answer_{k}" for k in (1, 2, 3)}
    problems = load_set("gpqa-diamond", tmp_path / "g.csv", mapping=renames)
    assert [p.id for p in problems] == ["rec000", "rec001"]
    assert problems[1].meta["choices"][problems[1].reference] == "right 1"
    with pytest.raises(BranchmergeError, match="not its published columns.*Correct Answer"):
        load_set("gpqa-diamond", tmp_path / "g.csv", mapping={"Answer": "correct_answer"})
    with pytest.raises(BranchmergeError, match=r"g\.csv: row 0: no column 'Correct Answer'.*mapping="):
        load_set("gpqa-diamond", tmp_path / "g.csv")


# --- code sets ------------------------------------------------------------------------------------------------

HUMANEVAL_ROW = {
    "task_id": "HumanEval/0",
    "prompt": 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n',
    "canonical_solution": "    return sum(xs)\n",
    "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1, 2]) == 3\n"
    "    assert candidate([]) == 0\n",
    "entry_point": "total",
}


def test_humaneval_folder_canonical_solution_passes_and_a_wrong_body_fails(tmp_path: Path) -> None:
    import datasets

    datasets.DatasetDict(
        {"test": datasets.Dataset.from_list([HUMANEVAL_ROW, {**HUMANEVAL_ROW, "task_id": "HumanEval/1"}])}
    ).save_to_disk(str(tmp_path / "humaneval"))
    problems = load_set("humaneval", tmp_path / "humaneval")
    assert [p.id for p in problems] == ["HumanEval/0", "HumanEval/1"]
    p = problems[0]
    assert (p.domain, p.question, p.grader["entry_point"]) == ("code", HUMANEVAL_ROW["prompt"], "total")
    assert p.reference == HUMANEVAL_ROW["prompt"] + HUMANEVAL_ROW["canonical_solution"]
    assert grade(p.reference, p.reference, p.grader).passed
    wrong = grade(f"```python\n{HUMANEVAL_ROW['prompt']}    return len(xs)\n```", p.reference, p.grader)
    assert not wrong.passed and "candidate([1, 2]) == 3" in wrong.detail
    assert load_set("humaneval", tmp_path / "humaneval", limit=1) == problems[:1]
    with pytest.raises(BranchmergeError, match="no split 'validation'"):
        load_set("humaneval", tmp_path / "humaneval", split="validation")


def _lite(cases: list[dict[str, str]]) -> str:
    """LiveCodeBench lite's private test cases: base64(zlib(pickle(JSON text)))."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


def test_livecodebench_stdin_tests_from_public_json_and_lite_private_cases(tmp_path: Path) -> None:
    stdin_row = {
        "question_title": "A+B",
        "question_content": "Read two integers and print their sum.",
        "platform": "atcoder",
        "question_id": "abc001_a",
        "contest_date": "2024-08-01T00:00:00",
        "starter_code": "",
        "difficulty": "easy",
        "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
        "private_test_cases": _lite([{"input": "10 -4\n", "output": "6\n", "testtype": "stdin"}]),
        "metadata": "{}",
    }
    functional_row = {
        **stdin_row,
        "question_id": "2800",
        "question_content": "Return the sum of a list and k.",
        "platform": "leetcode",
        "starter_code": "class Solution:\n    def addAll(self, nums: List[int], k: int) -> int:\n        ",
        "public_test_cases": json.dumps([{"input": "[1, 2]\n3", "output": "6", "testtype": "functional"}]),
        "private_test_cases": _lite([{"input": "[]\n0", "output": "0", "testtype": "functional"}]),
        "metadata": json.dumps({"func_name": "addAll"}),
    }
    path = write_jsonl(tmp_path / "lcb.jsonl", [stdin_row, functional_row])
    stdin, functional = load_set("livecodebench", path)
    assert stdin.grader == {
        "type": "code",
        "stdin_tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6\n"}],
    }
    assert (stdin.id, stdin.domain, stdin.difficulty, stdin.meta["tests"]) == ("abc001_a", "code", "easy", 2)
    assert "stdin" in stdin.question
    assert grade("```python\nprint(sum(map(int, input().split())))\n```", "", stdin.grader).passed
    g = grade("a, b = map(int, input().split())\nprint(a + abs(b))\n", "", stdin.grader)
    assert not g.passed and g.detail.startswith("stdin test 1: got '14', want '6'")
    assert functional.id == "livecodebench-2800" and "def addAll" in functional.question
    assert len(functional.grader["tests"]) == 2
    solution = "from typing import List\nclass Solution:\n    def addAll(self, nums, k):\n        return sum(nums) + k\n"
    assert grade(solution, "", functional.grader).passed
    assert not grade(solution.replace("+ k", "- k"), "", functional.grader).passed


def test_livecodebench_refuses_pickled_objects_and_names_the_column(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):  # would call print if unpickled with the standard loader
            return (print, ("unpickled!",))

    evil = base64.b64encode(zlib.compress(pickle.dumps(Boom()))).decode()
    row = {"question_id": "x", "question_content": "q", "public_test_cases": "[]", "private_test_cases": evil}
    with pytest.raises(
        BranchmergeError, match=r"e\.jsonl: row 0: column 'private_test_cases': .*refusing to load"
    ):
        load_set("livecodebench", write_jsonl(tmp_path / "e.jsonl", [row]))
    row["private_test_cases"] = ""
    with pytest.raises(BranchmergeError, match="column 'public_test_cases': no test cases"):
        load_set("livecodebench", write_jsonl(tmp_path / "e.jsonl", [row]))


# --- the seed's 10-domain Parquet -----------------------------------------------------------------------------


def test_ten_domain_parquet_as_published(tmp_path: Path) -> None:
    rows = [
        {
            "question_category": "Mathematical Reasoning",
            "difficulty_level": 3,
            "question": "What is 6 * 7?",
            "guide_text": "Multiply.",
            "answer": "42",
            "success_criteria": "States 42.",
        },
        {
            "question_category": "Ethical Dilemma Evaluation",
            "difficulty_level": 9,
            "question": "Should the AI lie?",
            "guide_text": "Weigh duties.",
            "answer": "It depends on the stakes.",
            "success_criteria": "Names two frameworks.",
        },
        {
            "question_category": "Mathematical Reasoning",
            "difficulty_level": 4,
            "question": "Explain why.",
            "guide_text": "",
            "answer": "Because the sum of angles is fixed, and that is why.",
            "success_criteria": "",
        },
    ]
    math, ethics, prose = load_set("ten-domain", write_parquet(tmp_path / "bench.parquet", rows))
    assert (math.id, math.domain, math.level, math.grader) == (
        "mathematical_reasoning-L3-0",
        "mathematical_reasoning",
        3,
        {"type": "math"},
    )
    assert math.meta["guide_text"] == "Multiply." and math.meta["success_criteria"] == "States 42."
    assert grade("\\boxed{42}", math.reference, math.grader).passed
    # Free-text categories are judged against the reference and the success criteria, not exact-matched.
    assert (ethics.domain, ethics.level, ethics.grader["type"]) == ("ethical_dilemma_evaluation", 9, "judge")
    assert ethics.grader["item"] == ethics.id and ethics.grader["question"] == "Should the AI lie?"
    assert "Names two frameworks." in ethics.grader["rubric"]
    assert ethics.meta["category"] == "Ethical Dilemma Evaluation"
    assert "success_criteria" in ethics.meta["grader_choice"]
    assert prose.grader["type"] == "judge" and "does not parse" in prose.meta["grader_choice"]
    bad = write_parquet(tmp_path / "bad.parquet", [{**rows[0], "difficulty_level": "hard"}])
    with pytest.raises(
        BranchmergeError, match=r"bad\.parquet: row 0: column 'difficulty_level': level 'hard'"
    ):
        load_set("ten-domain", bad)


# --- other files through a mapping, and bad input -------------------------------------------------------------


def test_a_mapping_loads_any_file(tmp_path: Path) -> None:
    rows = [
        {"q": "Capital of France?", "a": "Paris", "lvl": 1, "key": "t1"},
        {"q": "2+2?", "a": "4", "lvl": None, "key": "t2"},
    ]
    mapping = {
        "fields": {"question": "q", "reference": "a", "id": "key", "level": "lvl"},
        "domain": "trivia",
        "grader": {"type": "exact", "case_sensitive": False},
    }
    first, second = load_set("trivia", write_jsonl(tmp_path / "t.jsonl", rows), mapping=mapping)
    assert (first.id, first.domain, first.level, first.source) == ("t1", "trivia", 1, "trivia")
    assert second.level is None and grade("paris", first.reference, first.grader).passed
    no_level = write_jsonl(tmp_path / "n.jsonl", [rows[0], {"q": "x", "a": "y", "key": "k"}])
    with pytest.raises(
        BranchmergeError, match=r"n\.jsonl: row 1: no column 'lvl' .*fix the mapping's fields"
    ):
        load_set("trivia", no_level, mapping=mapping)
    with pytest.raises(BranchmergeError, match="grader type 'fuzzy' is not known"):
        load_set("trivia", tmp_path / "t.jsonl", mapping={**mapping, "grader": {"type": "fuzzy"}})
    with pytest.raises(
        BranchmergeError, match=r"mapping for 'trivia': .*fields: \['answer'\] are not Problem fields"
    ):
        load_set("trivia", tmp_path / "t.jsonl", mapping={**mapping, "fields": {"answer": "a"}})
    with pytest.raises(BranchmergeError, match="'trivia' is not a known set .*mapping="):
        load_set("trivia", tmp_path / "t.jsonl")


def test_bad_files_name_the_file_row_and_column(tmp_path: Path) -> None:
    with pytest.raises(BranchmergeError, match="nothing downloads"):
        load_set("gsm8k", tmp_path / "openai/gsm8k")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(BranchmergeError, match=r"broken\.parquet: cannot read"):
        load_set("gsm8k", tmp_path / "broken.parquet")
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": \n')
    with pytest.raises(BranchmergeError, match=r"bad\.jsonl:2: not valid JSON"):
        load_set("gsm8k", tmp_path / "bad.jsonl")
    rows = [{"question": "q1", "answer": "#### 1"}, {"question": None, "answer": "#### 2"}]
    with pytest.raises(
        BranchmergeError, match=r"n\.jsonl: row 1: column 'question': expected text, got NoneType"
    ):
        load_set("gsm8k", write_jsonl(tmp_path / "n.jsonl", rows))
    dup = [{**HUMANEVAL_ROW}, {**HUMANEVAL_ROW}]
    with pytest.raises(BranchmergeError, match=r"d\.jsonl: rows 0 and 1 have the same id 'HumanEval/0'"):
        load_set("humaneval", write_jsonl(tmp_path / "d.jsonl", dup))
    no_check = [{**HUMANEVAL_ROW, "test": "assert total([1]) == 1"}]
    with pytest.raises(BranchmergeError, match=r"h\.jsonl: row 0: column 'test': .*no check\(candidate\)"):
        load_set("humaneval", write_jsonl(tmp_path / "h.jsonl", no_check))
