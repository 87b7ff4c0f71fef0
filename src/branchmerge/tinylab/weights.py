"""Where the shipped tinylab checkpoints live inside the installed package.

The folders are package data (pyproject ships `tinylab/weights/**/*`); `python -m branchmerge.tinylab.build`
rewrites them from a seed.
"""

from __future__ import annotations

from pathlib import Path

from branchmerge.errors import BranchmergeError

WEIGHTS_DIR = Path(__file__).parent / "weights"


def _shipped(name: str) -> Path:
    path = WEIGHTS_DIR / name
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise BranchmergeError(
            f"{path}: the shipped tinylab {name} checkpoint is missing; "
            "rebuild it with `python -m branchmerge.tinylab.build` or reinstall branchmerge"
        )
    return path


def teacher_dir() -> Path:
    """The tiny teacher: all domains, levels 1..4, >= 90% on held-out items."""
    return _shipped("teacher")


def student_dir() -> Path:
    """The student base the demo fine-tunes into one expert per domain: a generalist, competent on every domain,
    with room left on the longer items (see `tinylab.build`)."""
    return _shipped("student")
