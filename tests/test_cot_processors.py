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


def _scored(
    pid: str, sample: int, rv: int | None, cd: int | None, tokens: int, verified: bool = True
) -> Trace:
    return Trace(
        problem_id=pid,
        teacher="t",
        model="m",
        sample=sample,
        temperature=0.6,
        rv=rv,
        cd=cd,
        completion_tokens=tokens,
        verified=verified,
        reasoning="r",
        answer="a",
    )


def test_sample_bands_shortest_per_problem_and_domain_shares() -> None:
    from branchmerge.cot.sample import SampleSpec, sample_traces

    problems = {
        p.id: p for p in [_problem("a", "qa"), _problem("b", "qb"), _problem("s", "qs", domain="sort")]
    }
    traces = [
        _scored("a", 0, rv=5, cd=4, tokens=90),
        _scored("a", 1, rv=5, cd=4, tokens=40),
        _scored("a", 2, rv=9, cd=4, tokens=10),  # too verbose
        _scored("a", 3, rv=5, cd=4, tokens=5, verified=False),  # shortest, but wrong
        _scored("b", 0, rv=None, cd=4, tokens=50),  # never scored: dropped and counted, no default
        _scored("s", 0, rv=3, cd=2, tokens=60),
        _scored("s", 1, rv=4, cd=8, tokens=70),  # too hard
    ]
    kept, removed = sample_traces(traces, problems, SampleSpec(rv=(2, 6), cd=(0, 6), per_problem="shortest"))
    assert [(t.problem_id, t.sample) for t in kept] == [("a", 1), ("s", 0)]
    assert removed == {
        "rv outside 2-6": 1,
        "no rv score": 1,
        "cd outside 0-6": 1,
        "not the shortest of its problem": 2,
    }
    kept, removed = sample_traces(traces, problems, SampleSpec(caps={"math": 2}, seed=3))
    assert sum(problems[t.problem_id].domain == "math" for t in kept) == 2 and len(kept) == 4
    assert removed == {"over its domain's share": 3}
    again, _ = sample_traces(traces, problems, SampleSpec(caps={"math": 2}, seed=3))
    assert again == kept


def test_process_sample_parses_its_options(tmp_path: Path) -> None:
    problems = [_problem("a", "qa")]
    write_jsonl(tmp_path / "p.jsonl", problems)
    write_jsonl(tmp_path / "t.jsonl", [_scored("a", 0, 5, 5, 10), _scored("a", 1, 8, 5, 10)])
    args = [
        "process",
        "sample",
        str(tmp_path / "t.jsonl"),
        "--problems",
        str(tmp_path / "p.jsonl"),
        "--out",
        str(tmp_path / "k.jsonl"),
    ]
    ok = CliRunner().invoke(app, [*args, "--rv", "0:6"])
    assert ok.exit_code == 0, ok.output
    assert [t.sample for t in read_jsonl(tmp_path / "k.jsonl", Trace)] == [0]
    bad = CliRunner().invoke(app, [*args, "--rv", "six"])
    assert bad.exit_code == 2 and "LOW:HIGH" in bad.output
    bad = CliRunner().invoke(app, [*args, "--cap", "math"])
    assert bad.exit_code == 2 and "DOMAIN=NUMBER" in bad.output
