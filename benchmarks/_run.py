"""Running the merge tools as subprocesses: wall time and peak RSS of one run, warming inputs, finding mergekit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from _checkpoints import weight_files

MERGEKIT_ARGS = "--no-copy-tokenizer --quiet --lazy-unpickle"
MKVENV_MERGEKIT = os.path.expanduser(os.environ.get("MERGEKIT_YAML", "mergekit-yaml"))

# A parent's RSS leaks into its children's ru_maxrss (Linux records the old memory's high-water mark at exec),
# and this process holds torch and the checkpoint writer. So each run goes through a small launcher that
# times its own child and reports that child's peak RSS alone.
LAUNCHER = """import resource, subprocess, sys, time
start = time.perf_counter()
rc = subprocess.call(sys.argv[2:], stdout=sys.stderr)
wall = time.perf_counter() - start
open(sys.argv[1], "w").write(f"{rc} {wall} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
"""


def timed(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run cmd; (wall seconds, peak RSS in MB of that process and its children). Raises on failure."""
    report = log.with_suffix(".rusage")
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-c", LAUNCHER, str(report), *cmd], stderr=out, check=False)
    rc, wall, kib = report.read_text().split()
    if int(rc) != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}; last output:\n{log.read_text()[-2000:]}")
    return float(wall), int(kib) / 1024  # Linux reports KiB


def warm_cache(dirs: list[Path]) -> float:
    """Flush the freshly written checkpoints to disk (so no tool competes with their write-back), then read
    every input weight file once; returns GB read."""
    os.sync()
    total = 0
    for d in dirs:
        for f in weight_files(d):
            with open(f, "rb") as fh:
                while block := fh.read(64 << 20):
                    total += len(block)
    return total / 1e9


def find_mergekit(arg: str) -> str | None:
    """`arg` as a path or a name on PATH, else $MERGEKIT_YAML; None when neither exists or `arg` is "none"."""
    if arg == "none":
        return None
    for candidate in (arg, MKVENV_MERGEKIT):
        found = shutil.which(candidate)
        if found:
            return found
    return None
