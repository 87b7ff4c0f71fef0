"""What a recipe stage is: a name, the stages it reads, a key, a run, its summary type and what a dry run can say
about it before running. recipe/graph.py lists the stages; the runner and the dry run loop over that list."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from branchmerge.recipe import stages
from branchmerge.recipe.resolve import STUDENT
from branchmerge.recipe.schema import TeacherSpec
from branchmerge.recipe.summaries import Summary
from branchmerge.teachers.config import TeacherConfig


class NotKnown(Exception):
    """An input a key needs is not known yet: a dry run before the data files or an upstream stage exist."""


class Upstream(Protocol):
    """The finished (or, in a dry run, planned) stages a stage reads: their keys and folders."""

    def key(self, stage: str) -> str: ...

    def path(self, stage: str) -> Path: ...


@dataclass
class Env:
    """What the stages read besides the recipe: the folder data paths are relative to, the resolved checkpoints
    ("student", "teacher:<name>"), and, in a run, where the servers a stage starts are kept open."""

    base: Path
    paths: dict[str, Path]
    show_progress: bool = False
    resources: contextlib.ExitStack | None = None  # None in a dry run: nothing is started
    _endpoints: dict[str, TeacherConfig] = field(default_factory=dict, init=False, repr=False)

    def student(self) -> Path:
        if STUDENT not in self.paths:
            raise NotKnown("train.student is not resolved")
        return self.paths[STUDENT]

    def checkpoint(self, t: TeacherSpec) -> Path | None:
        """A teacher's local checkpoint; None for an API teacher."""
        if t.checkpoint is not None and f"teacher:{t.name}" not in self.paths:
            raise NotKnown(f"teacher {t.name}: the checkpoint is not resolved")
        return self.paths.get(f"teacher:{t.name}")

    def endpoint(
        self, judge: tuple[TeacherSpec, Path | None] | None, engine: str = "auto"
    ) -> TeacherConfig | None:
        """A judge, started by `engine` on first use and kept for the rest of the run (a cached evaluation
        starts none)."""
        if judge is None:
            return None
        if judge[0].name not in self._endpoints:
            assert self.resources is not None, "a dry run starts no endpoint"
            self._endpoints[judge[0].name] = self.resources.enter_context(
                stages.teacher_endpoint(*judge, engine)
            )
        return self._endpoints[judge[0].name]


@dataclass(frozen=True)
class Estimate:
    """What `run --dry-run` says about a stage before running it. `key`: its key from the planned keys of its
    upstream stages, so whether it is cached is exact. `name`: its key needs trained models' keys, which only
    a run computes, so it counts as cached when any finished folder of its name exists, once the stage
    `after` has a known key. `none`: nothing."""

    by: Literal["key", "name", "none"]
    after: str = ""
    note: str = ""


@dataclass(frozen=True)
class Stage:
    name: str
    upstream: tuple[str, ...]  # the stages whose keys and folders `key` and `run` read
    key: Callable[[Upstream], str]
    run: Callable[[Upstream, Path], Summary]  # (upstream, work folder) -> summary
    summary: type[Summary]  # what `run` returns; a reused stage's stage.json is read back as this
    estimate: Estimate
