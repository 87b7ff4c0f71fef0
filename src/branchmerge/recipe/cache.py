"""Content-addressed stage folders: a stage's folder is named by a hash of its inputs and settings.

A finished stage holds `stage.json`; a rerun with the same inputs reuses it. Work happens in `<folder>.partial`,
renamed into place only when the stage completes, so an interrupted run never leaves a folder that looks done;
stages that can resume (trace generation) pick up their own partial folder on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import ValidationError

from branchmerge.errors import BranchmergeError
from branchmerge.recipe.summaries import Summary

S = TypeVar("S", bound=Summary)
_MODEL_FILES = ("*.safetensors", "*.json", "*.jinja", "*.txt")


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def dir_fingerprint(path: str | Path) -> str:
    """Hash of a model folder's weights, configs and tokenizer files (content, not timestamps)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted({f for pattern in _MODEL_FILES for f in path.glob(pattern) if f.is_file()})
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class StageOutcome:
    name: str
    key: str
    path: Path
    reused: bool
    seconds: float  # of this run (0 when reused)
    original_seconds: float
    summary: Summary


class StageCache:
    """The stage folders of one run folder: `<out>/stages/<name>-<key>/`, finished when `stage.json` is there.
    Nothing is created until a stage runs, so a dry run can ask about a folder that does not exist."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root) / "stages"

    def path_of(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}"

    def is_done(self, name: str, key: str) -> bool:
        return (self.path_of(name, key) / "stage.json").exists()

    def any_done(self, name: str) -> bool:
        """Some finished folder of a stage of this name, whatever its key."""
        return any(self.root.glob(f"{name}-*/stage.json"))

    def finished(self, name: str, key: str, summary_type: type[S]) -> tuple[S, float] | None:
        """A finished stage's summary and the seconds it ran; None when `name-key` has not finished."""
        meta = self.path_of(name, key) / "stage.json"
        if not meta.exists():
            return None
        info = json.loads(meta.read_text())
        if not isinstance(info, dict) or "summary" not in info or "seconds" not in info:
            raise BranchmergeError(f"{meta}: not a stage record (no summary or seconds); delete the folder")
        try:
            return cast(S, summary_type.model_validate(info["summary"])), info["seconds"]
        except ValidationError as e:
            raise BranchmergeError(
                f"{meta}: the summary is not what a {name} stage writes ({e.error_count()} error(s), first: "
                f"{e.errors()[0]['loc']}: {e.errors()[0]['msg']}); delete the folder to run the stage again"
            ) from None

    def run(self, name: str, key: str, fn: Callable[[Path], S], summary_type: type[S]) -> StageOutcome:
        """Reuse `name-key` if finished, else run `fn(work_dir) -> summary` and publish the folder."""
        final = self.path_of(name, key)
        done = self.finished(name, key, summary_type)
        if done is not None:
            return StageOutcome(name, key, final, True, 0.0, done[1], done[0])
        work = final.with_name(final.name + ".partial")
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        summary = fn(work)
        seconds = time.perf_counter() - start
        written = summary.model_dump(mode="json", exclude_unset=True)
        (work / "stage.json").write_text(
            json.dumps(
                {"name": name, "key": key, "seconds": seconds, "summary": written}, indent=2, default=str
            )
        )
        if final.exists():  # a folder without stage.json: left by an older, broken run
            shutil.rmtree(final)
        os.replace(work, final)
        return StageOutcome(name, key, final, False, seconds, seconds, summary)
