"""The contract every standard set follows, and the row accessor whose errors name the file, row and column."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem


class Row:
    """One row of a set's file, read by column name. Every error names the file, the row (0-based, counted
    over data rows as `collect` does) and the column, and says what to do."""

    def __init__(
        self, data: dict[str, Any], file: str, index: int, set_name: str, mapped: bool = False
    ) -> None:
        self.data = data
        self.file = file
        self.index = index
        self.set_name = set_name
        self.mapped = mapped  # read through a user's `fields` mapping, not a published layout

    def fail(self, column: str, message: str) -> BranchmergeError:
        return BranchmergeError(f"{self.file}: row {self.index}: column '{column}': {message}")

    def column(self, *names: str) -> str | None:
        """The first of `names` that this row has (published sets spell some columns several ways)."""
        return next((n for n in names if n in self.data), None)

    def get(self, *names: str) -> Any:
        """The value of the first of `names` present; an error listing the row's columns when none is."""
        name = self.column(*names)
        if name is None:
            alternatives = " or ".join(f"'{n}'" for n in names)
            fix = (
                "fix the mapping's fields"
                if self.mapped
                else f"rename yours with mapping={{'{names[0]}': 'your column'}}"
            )
            raise BranchmergeError(
                f"{self.file}: row {self.index}: no column {alternatives} for {self.set_name} "
                f"(columns: {sorted(self.data)}); {fix}"
            )
        return self.data[name]

    def text(self, *names: str, allow_empty: bool = False) -> str:
        """A column as text; numbers are written as text, None and (unless allowed) empty text are errors."""
        value = self.get(*names)
        name = self.column(*names) or names[0]
        if value is None or isinstance(value, dict | list):
            raise self.fail(name, f"expected text, got {type(value).__name__}")
        text = str(value)
        if not allow_empty and not text.strip():
            raise self.fail(name, "is empty")
        return text

    def optional(self, *names: str) -> Any:
        """A column's value, or None when the row has none of `names`."""
        name = self.column(*names)
        return None if name is None else self.data[name]

    def item_id(self, *names: str) -> str:
        """The row's id column as text; a bare number is prefixed with the set's name ("aime2024-60") so that
        ids stay apart when several sets are evaluated together. Rows without an id column get "<set>-<row>"."""
        value = self.optional(*names)
        if value is None or str(value).strip() == "":
            return f"{self.set_name}-{self.index}"
        text = str(value).strip()
        return f"{self.set_name}-{text}" if text.isdigit() else text


def parse_level(row: Row, *names: str) -> int | None:
    """A level from an int, "7" or MATH's "Level 5"; None when the column is absent, null or "Level ?"."""
    value = row.optional(*names)
    if value is None or (isinstance(value, str) and value.strip() in ("", "Level ?")):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    m = re.fullmatch(r"\s*(?:level\s*)?(\d+)\s*", str(value), re.IGNORECASE)
    if not m:
        raise row.fail(row.column(*names) or names[0], f"level {value!r} is not a number or 'Level N'")
    return int(m.group(1))


@dataclass(frozen=True)
class StandardSet:
    """A published benchmark: its name, the columns of its published files, and how one row becomes a Problem.

    `columns` lists every published column name the converter reads (alternative spellings included), so that
    a `mapping` can only rename columns the set knows. `convert(row, seed)` returns the Problem or raises the
    row's error. `split` is the split read from a `datasets` folder that holds several.
    """

    name: str
    description: str
    columns: tuple[str, ...]
    convert: Callable[[Row, int], Problem]
    split: str = "test"
