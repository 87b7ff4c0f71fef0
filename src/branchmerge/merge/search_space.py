"""Search spaces of a merge-search template, and how Optuna samples each one.

A space stands where the template has a number (or a gradient list). Each has `probes`, the values the
template is checked with before any trial (both ends of a range, every choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optuna.trial import BaseTrial
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator

Number = StrictInt | StrictFloat  # YAML numbers; true/false and strings are refused


class _Space(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RangeSpace(_Space):
    """`{low, high}`: a float in [low, high]; `step` for a grid, `log` for a log scale; all-integer = an int."""

    low: Number
    high: Number
    step: Number | None = None
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> RangeSpace:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be positive, got {self.step}")
        if self.log and (self.step is not None or self.low <= 0):
            raise ValueError("log: true needs low > 0 and no step")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high, self.step)) and self.step is not None

    def probes(self) -> list[Any]:
        return [self.low, self.high]


class ChoiceSpace(_Space):
    """`{choices: [...]}`: one of the values (a number, true/false, or a whole gradient list)."""

    choices: list[Number | bool | list[Number]] = Field(min_length=1)

    def probes(self) -> list[Any]:
        return list(self.choices)


class GradientSpace(_Space):
    """`{gradient: k, low, high}`: k points of a layer gradient, each searched in [low, high]."""

    gradient: int = Field(ge=2)
    low: Number
    high: Number
    step: Number | None = None

    @property
    def point(self) -> RangeSpace:
        return RangeSpace(low=self.low, high=self.high, step=self.step)

    def probes(self) -> list[Any]:
        return [[v] * self.gradient for v in self.point.probes()]


@dataclass(frozen=True)
class OrderSpace:
    """The order of a sequential merge: a permutation of `models`."""

    models: tuple[str, ...]

    def probes(self) -> list[Any]:
        return [list(self.models)]


Space = RangeSpace | ChoiceSpace | GradientSpace | OrderSpace
SPACE_KEYS = {"low", "high", "step", "log", "choices", "gradient"}


@dataclass(frozen=True)
class Slot:
    """Where a space sits in the template; `path` names the field (and the Optuna parameter)."""

    path: str
    space: Space


def suggest(trial: BaseTrial, slot: Slot) -> Any:
    """Sample one space. An order is drawn as a Lehmer code (fixed ranges, so TPE can model it)."""
    s, name = slot.space, slot.path
    if isinstance(s, RangeSpace):
        if s.is_int:
            return trial.suggest_int(name, int(s.low), int(s.high), step=int(s.step or 1))
        return trial.suggest_float(name, s.low, s.high, step=s.step, log=s.log)
    if isinstance(s, ChoiceSpace):
        if all(not isinstance(c, list) for c in s.choices):
            return trial.suggest_categorical(name, s.choices)  # type: ignore[arg-type]
        return s.choices[trial.suggest_categorical(name, list(range(len(s.choices))))]
    if isinstance(s, GradientSpace):
        return [suggest(trial, Slot(f"{name}@{i}", s.point)) for i in range(s.gradient)]
    assert isinstance(s, OrderSpace)
    pool = list(s.models)
    return [
        pool.pop(trial.suggest_int(f"order@{i}", 0, len(pool) - 1)) for i in range(len(s.models) - 1)
    ] + pool
