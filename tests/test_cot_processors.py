"""CoT processors: dedup (exact and MinHash near duplicates), decontaminate (shared n-grams), and the
`process` command's count table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from branchmerge.cli.main import app
from branchmerge.cot.decontaminate import decontaminate_traces, ngrams
from branchmerge.cot.dedup import dedup_traces, duplicate_problems
from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, Trace, read_jsonl, write_jsonl

LONG = (
    "A train leaves the station at nine in the morning travelling at sixty miles per hour towards a city "
    "that lies three hundred miles away; at what time does it arrive if it never stops on the way?"
)


def _problem(pid: str, question: str, domain: str = "math") -> Problem:
    return Problem(id=pid, domain=domain, question=question, reference="1")


def _traces(problems: list[Problem], per: int = 2, reasoning: str = "think") -> list[Trace]:
    return [
        Trace(
            problem_id=p.id,
            teacher="t",
            model="m",
            sample=s,
            temperature=0.6,
            reasoning=reasoning,
            answer="1",
        )
        for p in problems
        for s in range(per)
    ]


def test_exact_and_near_duplicates_are_found_and_distinct_questions_kept() -> None:
    questions = {
        "a": LONG,
        "b": "  " + LONG.upper() + " ",  # exact after normalisation
        "c": LONG.replace("sixty", "seventy"),  # one word changed: near
        "d": "Sort the list 5 3 9 1 in increasing order and explain each comparison you make.",
        "e": "What is the capital of France, and which river runs through it?",
    }
    dups = duplicate_problems(questions)
    assert dups == {"b": ("a", "exact"), "c": ("a", "near")}
    # four words changed: Jaccard 0.53 over word 3-grams, a repeat only for a loose threshold
    edited = (
        LONG.replace("nine", "ten")
        .replace("sixty", "seventy")
        .replace("three", "four")
        .replace("train", "bus")
    )
    assert duplicate_problems({"a": LONG, "h": edited}, threshold=0.8) == {}
    assert duplicate_problems({"a": LONG, "h": edited}, threshold=0.3) == {"h": ("a", "near")}
    with pytest.raises(BranchmergeError, match=r"must be in \(0, 0.98\]"):
        duplicate_problems(questions, threshold=0.99)


def test_dedup_drops_every_trace_of_a_repeat_and_counts_them() -> None:
    problems = [
        _problem("a", LONG),
        _problem("c", LONG.replace("sixty", "seventy")),
        _problem("d", "Sort 3 1 2"),
    ]
    kept, removed, _ = dedup_traces(_traces(problems), {p.id: p for p in problems})
    assert sorted({t.problem_id for t in kept}) == ["a", "d"] and len(kept) == 4
    assert removed == {"near duplicate": 2}


def test_decontaminate_finds_a_quoted_benchmark_item_in_question_or_reasoning() -> None:
    bench = [_problem("math500-7", LONG)]
    clean = _problem("x", "What is the sum of the first ten positive integers? Show the steps.")
    copied = _problem("y", "Answer this: " + LONG)
    problems = {p.id: p for p in (clean, copied)}
    quoting = Trace(
        problem_id="x",
        teacher="t",
        model="m",
        sample=5,
        temperature=0.6,
        reasoning="I recall: " + LONG[:120],
        answer="55",
    )
    traces = [*_traces([clean, copied], per=1), quoting]
    kept, removed, found = decontaminate_traces(traces, problems, bench, n=13)
    assert [(t.problem_id, t.sample) for t in kept] == [("x", 0)]
    assert removed == {"13-gram in question": 1, "13-gram in reasoning": 1}
    assert {f.benchmark_item for f in found} == {"math500-7"}
    assert all(f.ngram in ngrams(LONG, 13) for f in found)
    # a larger n than the quoted span: the reasoning's 120 characters (22 words) no longer match
    kept_30, _, _ = decontaminate_traces(traces, problems, bench, n=30)
    assert ("x", 5) in [(t.problem_id, t.sample) for t in kept_30]


def test_process_command_writes_kept_traces_and_the_count_table(tmp_path: Path) -> None:
    problems = [_problem("a", LONG), _problem("b", LONG + " "), _problem("d", "Sort 3 1 2", domain="sort")]
    write_jsonl(tmp_path / "p.jsonl", problems)
    write_jsonl(tmp_path / "t.jsonl", _traces(problems))
    result = CliRunner().invoke(
        app,
        [
            "process",
            "dedup",
            str(tmp_path / "t.jsonl"),
            "--problems",
            str(tmp_path / "p.jsonl"),
            "--out",
            str(tmp_path / "kept.jsonl"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(tmp_path / "kept.jsonl", Trace)) == 4
    counts = json.loads((tmp_path / "kept.counts.json").read_text())
    assert counts["before"] == {"math": 4, "sort": 2} and counts["after"] == {"math": 2, "sort": 2}
    assert counts["removed"] == {"exact duplicate": 2}
    bad = CliRunner().invoke(
        app,
        [
            "process",
            "decontaminate",
            str(tmp_path / "t.jsonl"),
            "--problems",
            str(tmp_path / "p.jsonl"),
            "--out",
            str(tmp_path / "x.jsonl"),
        ],
    )
    assert bad.exit_code == 2 and "--benchmark" in bad.output
