"""Repairing append-only JSONL files: a torn last line after a crash, and error traces to ask again.

Generation and evaluation append one flushed line per record (`append_jsonl`) and resume from what is on disk;
these two helpers put such a file back in a state where appending and resuming are exact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path

from branchmerge.records.jsonl import read_jsonl, write_jsonl
from branchmerge.records.models import Trace


def repair_tail(path: Path) -> None:
    """Make the file end at a line boundary, so appended lines never glue onto a torn one.

    A last line without a newline is kept (and terminated) if it is valid JSON, exactly as `read_jsonl` keeps
    it; otherwise it is a crash mid-write and is cut off, exactly as `read_jsonl` drops it.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        start = size
        while start > 0:  # scan backwards for the last newline, 64 KiB at a time
            step = min(65536, start)
            f.seek(start - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                start = start - step + nl + 1
                break
            start -= step
        if start == size:
            return
        f.seek(start)
        tail = f.read()
        try:
            json.loads(tail)
        except ValueError:
            f.truncate(start)
        else:
            f.write(b"\n")


def drop_error_traces(out_path: Path, teachers: Collection[str]) -> int:
    """Rewrite the file without these teachers' error traces (atomically), so their keys are asked again;
    returns how many were dropped. A crash after this only means those keys are still missing."""
    repair_tail(out_path)
    if not out_path.exists():
        return 0
    traces = read_jsonl(out_path, Trace)
    keep = [t for t in traces if t.error is None or t.teacher not in teachers]
    if len(keep) < len(traces):
        write_jsonl(out_path, keep)
    return len(traces) - len(keep)
