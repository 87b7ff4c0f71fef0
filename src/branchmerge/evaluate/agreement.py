"""Grader agreement with people: hand-labelled answer/reference pairs, graded, compared with the labels.

A labelled set is a folder of JSONL files (the project's own is `tests/data/grader_labels/`), one row per pair:

    {"grader": "math", "answer": "\\boxed{0.5}", "reference": "\\frac{1}{2}", "spec": {"type": "math"},
     "label": true, "reason": "0.5 is one half"}
    {"grader": "sql", "item": "mdr-sql-L5", "answer": "```sql ...```", "label": false, "reason": "no DISTINCT"}

`label` is what a person would accept as a right answer to the item, decided by reasoning about the question,
and `reason` says why in a few words (hard negatives included: a hedge between two answers, a number inside the
thinking only, a near-miss query). A row names either `reference` and `spec`, or an mdr `item` whose reference
and grader spec it takes; with an `item`, `"answer": null` stands for the item's own reference. Files whose name
ends in `.pending.jsonl` are skipped by `load_labels` unless asked for (labels for a grader that is being
changed elsewhere, run once it lands).

`agreement` grades every row with the registered graders (`grade_many`, a grader error counts as a fail) and
returns, per grader, the share of rows whose verdict equals the label, with the rows that disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from branchmerge.errors import BranchmergeError
from branchmerge.graders import grade_many
from branchmerge.records import Problem


@dataclass(frozen=True)
class Labelled:
    grader: str
    answer: str
    reference: str
    spec: dict[str, Any]
    label: bool
    reason: str
    where: str  # "file:line", for reports


@dataclass
class Agreement:
    grader: str
    total: int = 0
    agree: int = 0
    disagreements: list[tuple[Labelled, str]] = field(default_factory=list)  # (row, grader's detail)

    @property
    def rate(self) -> float:
        return self.agree / self.total if self.total else 0.0


@cache
def _mdr_items() -> dict[str, Problem]:
    from branchmerge.evaluate.mdr import load_mdr

    return {p.id: p for p in load_mdr()}


def _row(raw: Any, where: str) -> Labelled:
    if not isinstance(raw, dict):
        raise BranchmergeError(f"{where}: expected a JSON object, got {type(raw).__name__}")

    def need(name: str, kind: type | tuple[type, ...]) -> Any:
        if name not in raw:
            raise BranchmergeError(f"{where}: field '{name}' is missing")
        if not isinstance(raw[name], kind):
            raise BranchmergeError(f"{where}: field '{name}' must be {kind}, got {raw[name]!r:.60}")
        return raw[name]

    grader, label, reason = need("grader", str), need("label", bool), need("reason", str)
    if "item" in raw:
        item = _mdr_items().get(need("item", str))
        if item is None:
            raise BranchmergeError(f"{where}: field 'item': {raw['item']!r} is not an mdr item")
        reference, spec = item.reference, dict(item.grader)
        answer = reference if raw.get("answer") is None else need("answer", str)
    else:
        reference, spec, answer = need("reference", str), need("spec", dict), need("answer", str)
    if spec.get("type", "exact") != grader:
        raise BranchmergeError(
            f"{where}: field 'grader' is {grader!r} but the spec's type is {spec.get('type')!r}"
        )
    return Labelled(grader, answer, reference, spec, label, reason, where)


def load_labels(folder: str | Path, pending: bool = False) -> list[Labelled]:
    """Every labelled row of the folder's JSONL files (sorted by name); bad rows raise naming file, line, field."""
    rows: list[Labelled] = []
    files = sorted(Path(folder).glob("*.jsonl"))
    if not files:
        raise BranchmergeError(f"{folder}: no labelled .jsonl files")
    for path in files:
        if path.name.endswith(".pending.jsonl") and not pending:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise BranchmergeError(f"{path}:{n}: not JSON: {e}") from None
            rows.append(_row(raw, f"{path.name}:{n}"))
    return rows


def agreement(rows: list[Labelled], workers: int | None = None) -> dict[str, Agreement]:
    """Per grader: how many rows the grader's verdict agrees with the label on, and the rows it does not."""
    grades = grade_many([(r.answer, r.reference, r.spec) for r in rows], workers, errors="record")
    out: dict[str, Agreement] = {}
    for row, g in zip(rows, grades, strict=True):
        a = out.setdefault(row.grader, Agreement(row.grader))
        a.total += 1
        if g.passed == row.label:
            a.agree += 1
        else:
            a.disagreements.append((row, g.detail or g.error or ""))
    return out
