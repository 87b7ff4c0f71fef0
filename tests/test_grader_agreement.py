"""Graders against hand-labelled pairs (tests/data/grader_labels): agreement with what a person would accept,
and bad label files."""

from __future__ import annotations

from pathlib import Path

import pytest

from branchmerge.errors import BranchmergeError
from branchmerge.evaluate.agreement import agreement, load_labels
from branchmerge.graders import grade_many

LABELS = Path(__file__).parent / "data" / "grader_labels"
GRADERS = {"math", "numeric", "choice", "exact", "regex", "sql", "constraints", "plan", "code"}


@pytest.fixture(scope="module")
def results():
    return agreement(load_labels(LABELS))


def test_the_labelled_set_is_large_and_has_hard_negatives():
    rows = load_labels(LABELS)
    assert len(rows) >= 300 and {r.grader for r in rows} == GRADERS
    for name in GRADERS:
        mine = [r for r in rows if r.grader == name]
        assert any(r.label for r in mine) and sum(not r.label for r in mine) >= 4, name
    assert all(r.reason.strip() for r in rows)


def test_pending_label_files_are_read_only_when_asked_for(tmp_path: Path):
    row = '{"grader": "exact", "answer": "a", "reference": "a", "spec": {}, "label": true, "reason": "r"}\n'
    (tmp_path / "exact.jsonl").write_text(row)
    (tmp_path / "exact.pending.jsonl").write_text(row + row)
    assert len(load_labels(tmp_path)) == 1 and len(load_labels(tmp_path, pending=True)) == 3


def test_every_grader_agrees_with_the_labels_on_at_least_99_percent(results):
    assert set(results) == GRADERS
    for name, a in results.items():
        shown = [f"{row.where} ({row.reason}): {detail}" for row, detail in a.disagreements]
        assert a.rate >= 0.99, f"{name}: {a.agree}/{a.total}; {shown}"


def test_a_wrong_label_is_counted_as_a_disagreement(tmp_path: Path):
    """The check can fail: the same pair labelled the other way disagrees."""
    (tmp_path / "x.jsonl").write_text(
        '{"grader": "math", "answer": "\\\\boxed{2}", "reference": "2", "spec": {"type": "math"}, '
        '"label": false, "reason": "deliberately mislabelled"}\n'
    )
    (a,) = agreement(load_labels(tmp_path), workers=1).values()
    assert (a.total, a.agree, a.rate) == (1, 0, 0.0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"grader": "math", "answer": "1", "spec": {"type": "math"}, "label": true, "reason": "r"}',
            "x.jsonl:1: field 'reference' is missing",
        ),
        (
            '{"grader": "sql", "item": "mdr-sql-L99", "answer": null, "label": true, "reason": "r"}',
            "field 'item': 'mdr-sql-L99' is not an mdr item",
        ),
        (
            '{"grader": "math", "answer": "1", "reference": "1", "spec": {"type": "math"}, "label": "yes", "reason": "r"}',
            "field 'label' must be",
        ),
        (
            '{"grader": "math", "answer": "1", "reference": "1", "spec": {"type": "numeric"}, "label": true, "reason": "r"}',
            "field 'grader' is 'math' but the spec's type is 'numeric'",
        ),
        ("{not json", "x.jsonl:1: not JSON"),
    ],
)
def test_a_bad_label_row_is_one_error_naming_file_line_and_field(tmp_path: Path, line: str, message: str):
    (tmp_path / "x.jsonl").write_text(line + "\n")
    with pytest.raises(BranchmergeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_labels(tmp_path)


def test_a_reference_no_grader_can_read_is_a_recorded_error_and_the_batch_goes_on():
    items = [
        ("\\boxed{2}", "2", {"type": "math"}),
        ("2", "no math here", {"type": "math"}),
        ("2", "two", {"type": "numeric"}),
        ("B", "E", {"type": "choice"}),
        ("x", "(", {"type": "regex"}),
        ("The answer is 18.", "18", {"type": "numeric", "final": True}),
    ]
    grades = grade_many(items, workers=2, errors="record")
    assert [g.passed for g in grades] == [True, False, False, False, False, True]
    assert [g.error is not None for g in grades] == [False, True, True, True, True, False]
    assert "reference" in (grades[1].error or "") and "reference" in (grades[2].error or "")
