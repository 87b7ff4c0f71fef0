"""`collect`: every file kind and a datasets folder, field mapping, duplicates, caps and weights, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from branchmerge.collect import CollectSpec, collect, load_collect_spec
from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, read_jsonl


def _write_sources(tmp: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    math = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i), "lvl": i % 5 + 1} for i in range(30)]
    math.append({"problem": "  what IS 3 +   3? ", "answer": "6", "lvl": 1})  # a duplicate of row 3
    pq.write_table(pa.Table.from_pylist(math), tmp / "math.parquet")
    (tmp / "code.jsonl").write_text(
        "".join(
            json.dumps(
                {"task_id": f"c{i}", "prompt": f"Write f{i}", "tests": f"assert f{i}()", "cat": "code"}
            )
            + "\n"
            for i in range(10)
        )
    )
    (tmp / "logic.csv").write_text(
        "q,a\n" + "".join(f"Is {i} even?,{'yes' if i % 2 == 0 else 'no'}\n" for i in range(8))
    )
    datasets.Dataset.from_list(
        [{"question": f"Science {i}?", "reference": "x"} for i in range(6)]
    ).save_to_disk(str(tmp / "science"))


SOURCES = [
    {
        "path": "math.parquet",
        "fields": {"question": "problem", "reference": "answer", "level": "lvl"},
        "domain": "math",
        "grader": {"type": "math"},
    },
    {
        "path": "code.jsonl",
        "fields": {"question": "prompt", "reference": "tests", "domain": "cat", "id": "task_id"},
    },
    {"path": "logic.csv", "fields": {"question": "q", "reference": "a"}, "domain": "logic"},
    {"path": "science", "domain": "science"},
]


def test_collect_maps_every_source_and_drops_duplicates(tmp_path: Path) -> None:
    _write_sources(tmp_path)
    report = collect(CollectSpec(sources=SOURCES), tmp_path / "p.jsonl", base_dir=tmp_path)
    problems = read_jsonl(tmp_path / "p.jsonl", Problem)
    rows = {r.domain: (r.read, r.duplicates, r.kept) for r in report.rows}
    assert rows == {"math": (31, 1, 30), "code": (10, 0, 10), "logic": (8, 0, 8), "science": (6, 0, 6)}
    by_id = {p.id: p for p in problems}
    assert by_id["c3"].question == "Write f3" and by_id["c3"].domain == "code"
    assert (
        by_id["math-7"].reference == "14"
        and by_id["math-7"].level == 3
        and by_id["math-7"].grader == {"type": "math"}
    )
    assert by_id["logic-4"].reference == "yes" and by_id["science-0"].source == "science"


def test_weights_and_caps_set_each_domains_count_reproducibly(tmp_path: Path) -> None:
    _write_sources(tmp_path)
    spec = CollectSpec(
        sources=SOURCES,
        weights={"math": 2, "code": 1, "logic": 1, "science": 0},
        total=20,
        caps={"code": 3},
        seed=4,
    )
    report = collect(spec, tmp_path / "a.jsonl", base_dir=tmp_path)
    kept = {r.domain: (r.target, r.kept) for r in report.rows}
    assert kept == {"math": (10, 10), "code": (3, 3), "logic": (5, 5), "science": (0, 0)}
    collect(spec, tmp_path / "b.jsonl", base_dir=tmp_path)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    other = collect(spec.model_copy(update={"seed": 5}), tmp_path / "c.jsonl", base_dir=tmp_path)
    assert (
        other.kept == report.kept and (tmp_path / "c.jsonl").read_text() != (tmp_path / "a.jsonl").read_text()
    )


def test_a_missing_column_names_the_source_row_and_column(tmp_path: Path) -> None:
    _write_sources(tmp_path)
    bad = [
        {"path": "math.parquet", "fields": {"question": "problem", "reference": "solution"}, "domain": "m"}
    ]
    with pytest.raises(
        BranchmergeError, match=r"math.parquet: row 0 has no column 'solution' \(for reference\)"
    ):
        collect(CollectSpec(sources=bad), tmp_path / "p.jsonl", base_dir=tmp_path)
    assert not (tmp_path / "p.jsonl").exists()


def test_spec_errors_name_the_field(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("sources:\n  - {path: x.jsonl}\n")
    with pytest.raises(BranchmergeError, match="c.yaml: sources.0"):
        load_collect_spec(f)
    f.write_text("sources:\n  - {path: x.jsonl, domain: d}\nweights: {d: 1}\n")
    with pytest.raises(BranchmergeError, match="total"):
        load_collect_spec(f)
    f.write_text("sources:\n  - {path: x.jsonl, domain: d, fields: {answer: a}}\n")
    with pytest.raises(BranchmergeError, match="not Problem fields"):
        load_collect_spec(f)
