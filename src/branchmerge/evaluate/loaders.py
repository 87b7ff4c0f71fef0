"""Load a standard benchmark (MATH500, AIME, GPQA-Diamond, GSM8K, HumanEval, LiveCodeBench, the seed's 10-domain
Parquet) or any other file of questions as Problem records, from local files only.

    load_set("gpqa-diamond", "gpqa_diamond.csv", seed=0)
    load_set("gsm8k", "gsm8k/test.jsonl", limit=100)
    load_set("math500", "math500_folder")                      # a `save_to_disk` folder (split "test")
    load_set("gsm8k", "mine.parquet", mapping={"question": "q", "answer": "worked"})   # renamed columns
    load_set("trivia", "trivia.jsonl", mapping={"fields": {"question": "q", "reference": "a"},
                                                "domain": "trivia", "grader": {"type": "exact"}})

Files are read by `collect.read_rows` (.jsonl, .json, .parquet, .csv, `datasets.save_to_disk` folders); a path
that does not exist is an error, never a download. `mapping` means one of two things:
- for a registered set (`sets.SETS`), it renames columns: {published column: your column}, so a copy of GPQA
  with `question`/`correct` columns loads with {"Question": "question", "Correct Answer": "correct"};
- for any other name, it says how to read the file, in `collect`'s source form: `fields` (Problem field ->
  column; question and reference default to columns of those names), `domain` (one for every row, or map a
  column with fields.domain), `grader` (a spec, checked against the grader registry), `split`.
Every error names the file, the row (0-based over data rows, as `collect` counts) and the column.
`seed` only matters for GPQA (its option order); `limit` keeps the first N rows; `split` picks a split of a
`datasets` folder (default: the set's published split, or the folder's only split).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from branchmerge.collect import SourceSpec, read_rows
from branchmerge.errors import BranchmergeError, validation_error
from branchmerge.evaluate.sets import SETS, Row, StandardSet, find_set
from branchmerge.evaluate.sets.base import parse_level
from branchmerge.graders import GRADERS, needs_reference
from branchmerge.records import Problem


def load_set(
    name: str,
    path: str | Path,
    *,
    mapping: dict[str, Any] | None = None,
    seed: int = 0,
    limit: int | None = None,
    split: str | None = None,
) -> list[Problem]:
    """The Problems of the file or folder at `path`, read as the set `name` (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise BranchmergeError(
            f"{path}: not found (standard sets are read from local files; nothing downloads)"
        )
    if limit is not None and limit < 1:
        raise BranchmergeError(f"limit must be at least 1, got {limit}")
    known = find_set(name)
    if known is not None:
        standard, renames = known, _renames(known, mapping)
    elif mapping is None:
        raise BranchmergeError(
            f"'{name}' is not a known set (known: {', '.join(SETS)}); to load another file give "
            "mapping={'fields': {'question': COLUMN, 'reference': COLUMN}, 'domain': ..., 'grader': {...}}"
        )
    else:
        standard, renames = mapped_set(name, mapping), {}
    source = SourceSpec(path=str(path), split=split or _split(path, standard.split), domain=standard.name)
    problems: list[Problem] = []
    for i, data in enumerate(_rows(source, path)):
        if limit is not None and i >= limit:
            break
        if not isinstance(data, dict):
            raise BranchmergeError(
                f"{path}: row {i}: expected an object with columns, got {type(data).__name__}"
            )
        for published, yours in renames.items():
            if yours in data:
                data[published] = data.pop(yours)
        problems.append(standard.convert(Row(data, str(path), i, standard.name, known is None), seed))
    _check_unique_ids(problems, path)
    return problems


def _renames(standard: StandardSet, mapping: dict[str, Any] | None) -> dict[str, str]:
    if not mapping:
        return {}
    bad = [k for k, v in mapping.items() if k not in standard.columns or not isinstance(v, str)]
    if bad:
        raise BranchmergeError(
            f"mapping for {standard.name}: {bad} are not its published columns mapped to your column names "
            f"(its columns: {', '.join(standard.columns)})"
        )
    return dict(mapping)


def mapped_set(name: str, mapping: dict[str, Any]) -> StandardSet:
    """A set read by a user's mapping in `collect`'s source form (fields / domain / grader / split)."""
    unknown = sorted(set(mapping) - {"fields", "domain", "grader", "split"})
    if unknown:
        raise BranchmergeError(
            f"mapping for '{name}': unknown keys {unknown} (known: fields, domain, grader, split)"
        )
    try:
        spec = SourceSpec(path=name, **mapping)
    except ValidationError as e:
        raise validation_error(f"mapping for '{name}'", e) from None
    except TypeError as e:
        raise BranchmergeError(f"mapping for '{name}': {e}") from None
    kind = spec.grader.get("type", "exact")
    if kind not in GRADERS:
        raise BranchmergeError(
            f"mapping for '{name}': grader type '{kind}' is not known (known: {', '.join(sorted(GRADERS))})"
        )
    fields = {"question": "question", "reference": "reference"} | spec.fields
    empty_reference_ok = not needs_reference(spec.grader)

    def convert(row: Row, seed: int) -> Problem:
        level, difficulty = None, None
        if "level" in fields:
            row.get(fields["level"])  # a mapped column must exist (as in `collect`); a null value is no level
            level = parse_level(row, fields["level"])
        if "difficulty" in fields and (value := row.get(fields["difficulty"])) is not None:
            difficulty = str(value)
        return Problem(
            id=row.item_id(fields["id"]) if "id" in fields else f"{name}-{row.index}",
            domain=row.text(fields["domain"]).strip() if "domain" in fields else str(spec.domain),
            question=row.text(fields["question"]),
            reference=row.text(fields["reference"], allow_empty=empty_reference_ok),
            grader=spec.grader,
            level=level,
            difficulty=difficulty,
            source=name,
        )

    return StandardSet(name, "read by a mapping", tuple(fields.values()), convert, spec.split)


def _split(path: Path, wanted: str) -> str:
    """The set's published split `wanted`, or the only split of a `datasets` folder that lacks it (its
    dataset_dict.json lists them)."""
    listing = path / "dataset_dict.json"
    if not listing.is_file():
        return wanted
    try:
        splits = json.loads(listing.read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        return wanted  # read_rows reports what is wrong with the folder
    return splits[0] if wanted not in splits and len(splits) == 1 else wanted


def _rows(source: SourceSpec, path: Path) -> Iterator[dict[str, Any]]:
    """read_rows, with a reader's own exceptions (a corrupt Parquet file, bad JSON, bad encoding) turned into
    one line naming the file."""
    try:
        yield from read_rows(source)
    except BranchmergeError:
        raise
    except Exception as e:
        raise BranchmergeError(f"{path}: cannot read ({type(e).__name__}: {str(e)[:200]})") from None


def _check_unique_ids(problems: list[Problem], path: Path) -> None:
    first: dict[str, int] = {}
    for i, p in enumerate(problems):
        if p.id in first:
            raise BranchmergeError(
                f"{path}: rows {first[p.id]} and {i} have the same id '{p.id}'; ids key the eval results, "
                "so they must be unique (fix the file, or map another id column)"
            )
        first[p.id] = i
