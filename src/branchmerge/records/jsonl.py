"""JSONL I/O: append-only writes flushed per record, and atomic finalisation (temp file + rename)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from branchmerge.errors import BranchmergeError, validation_error

R = TypeVar("R", bound=BaseModel)


def read_jsonl(path: str | Path, record: type[R]) -> list[R]:
    """Read every line of `path` as `record`; a bad line is an error naming the file and line.

    A torn last line (a crash mid-write) is dropped, because append-only writers can leave one.
    """
    path = Path(path)
    if not path.exists():
        raise BranchmergeError(f"{path}: file not found")
    lines = path.read_text(encoding="utf-8").split("\n")
    out: list[R] = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(record.model_validate(json.loads(line)))
        except json.JSONDecodeError as e:
            if i == len(lines):  # torn final line without newline: a crash, not bad data
                break
            raise BranchmergeError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        except ValidationError as e:
            raise validation_error(f"{path}:{i}", e) from None
    return out


def _dump(rec: BaseModel) -> str:
    return json.dumps(rec.model_dump(mode="json", by_alias=True), ensure_ascii=False)


def append_jsonl(path: str | Path, records: Iterable[BaseModel]) -> int:
    """Append records, one flushed line each; returns how many were written."""
    n = 0
    with open(path, "a", encoding="utf-8") as f:
        for rec in records:
            f.write(_dump(rec) + "\n")
            f.flush()
            n += 1
    return n


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_jsonl(path: str | Path, records: Iterable[BaseModel]) -> int:
    """Write all records atomically; returns the count."""
    lines = [_dump(r) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to `final` only if the block finishes.

    An existing `final` is replaced. On error the temporary folder is removed, so nothing half-written remains.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
