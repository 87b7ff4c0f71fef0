"""How many threads each workload computes with, and whether idle OpenMP threads spin or sleep: set here only.

Training (`train/trl_run.py`), merging (`merge/engine.py`) and evaluation's in-process generation
(`evaluate/generation.py`) take their `ThreadPolicy` from here instead of torch's defaults; `policy("serve")` and
`policy("grade")` state what the teacher server and `grade_many` do (one intra-op thread; one single-threaded
process per core). The defaults are measured, not guessed
(`benchmarks/busy_bench.py`, figures in benchmarks/README.md):

- torch's CPU kernels run on an OpenMP pool of one thread per core, and libgomp's idle threads spin for a while
  before they sleep. When another process wants a core, a spinning thread holds its core while the thread it waits
  for is descheduled, so each parallel region waits for a time slice: a training step of the 0.8M-parameter
  student went from 0.3-0.7 s to 1.6-40 s on a shared 2-core machine. With `OMP_WAIT_POLICY=PASSIVE` idle threads
  sleep at once, and every workload here runs that way.
- Training: with sleeping waits one thread per core is the fastest, even for the tiny student, quiet or beside a
  competing process.
- Serving and generation (evaluation) of a small model: one intra-op thread. Each decoding step is many tiny ops,
  and waking a sleeping thread for each costs more than the second core gives; below `SMALL_MODEL` parameters one
  thread is fastest (the demo's 1,200 held-out items, greedy, 256 rows a batch, load average 6: 9.8 and 12.8 s
  with one thread, 17.7 and 18.2 s with two). Larger models use every core.
- A merge runs its math beside a reader and a writer thread (`merge/engine.py`). With sleeping waits one thread
  per core was as fast as or faster than leaving a core to them (0.1b TIES: 9.6 vs 9.9 s quiet, 11.7 vs 13.1 s
  beside a competing process), so it uses every core; where waits spin it leaves one core free.
- Grading runs one process per core, each single-threaded (benchmarks/README.md, `grade_bench.py`).

`OMP_WAIT_POLICY` is read once, when torch loads libgomp, so `prepare_environment` must run before `import torch`:
the CLI calls it first thing, and `subprocess_env` gives child processes the same settings. In a process whose
OpenMP threads spin (torch imported before the variable was set), training also runs one thread: two spinning
threads are the collapse above.

Overrides, in order: the `threads` argument of `policy`/`apply`, then the environment variable
`BRANCHMERGE_THREADS` (an integer), then the defaults above. `BRANCHMERGE_OMP_WAIT=active` keeps libgomp's
spinning (faster by a few percent for many-threaded work on a dedicated machine).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from branchmerge.errors import BranchmergeError

Workload = Literal["train", "serve", "eval", "grade", "merge"]
WORKLOADS: tuple[Workload, ...] = ("train", "serve", "eval", "grade", "merge")
THREADS_ENV = "BRANCHMERGE_THREADS"
WAIT_ENV = "BRANCHMERGE_OMP_WAIT"
SMALL_MODEL = 50_000_000  # parameters; below this, generation runs one intra-op thread (README figures)


@dataclass(frozen=True)
class ThreadPolicy:
    workload: Workload
    intra_op: int  # torch.set_num_threads
    processes: int  # worker processes (grading); 1 elsewhere
    passive_wait: bool  # OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning
    overlap_io: bool  # read ahead and write behind in threads beside the compute (merge)


def cores() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _env_threads() -> int | None:
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise BranchmergeError(f"${THREADS_ENV}={raw!r}: must be a positive integer (threads per process)")
    return int(raw)


_set_after_torch = False  # prepare_environment ran after torch had loaded libgomp: too late to take effect


def sleeping_waits() -> bool:
    """Whether this process's OpenMP threads sleep when idle (as far as we can tell: OMP_WAIT_POLICY=PASSIVE, set
    before torch loaded)."""
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" and not _set_after_torch


def passive_wait() -> bool:
    """Whether the configuration asks for sleeping waits ($BRANCHMERGE_OMP_WAIT, default passive)."""
    raw = os.environ.get(WAIT_ENV, "passive").strip().lower()
    if raw not in ("passive", "active"):
        raise BranchmergeError(f"${WAIT_ENV}={raw!r}: must be 'passive' or 'active'")
    return raw == "passive"


def policy(
    workload: Workload, threads: int | None = None, *, params: int | None = None, sleeping: bool | None = None
) -> ThreadPolicy:
    """The thread policy of one workload. `params`: the model's parameter count, where one is involved
    (None counts as small: the tiny models of the demo and tests are the common CPU case). `sleeping`: whether
    idle OpenMP threads sleep where the policy applies (default: `sleeping_waits()`, this process)."""
    sleeping = sleeping_waits() if sleeping is None else sleeping
    if workload not in WORKLOADS:
        raise BranchmergeError(
            f"thread policy: {workload!r} is not a workload (known: {', '.join(WORKLOADS)})"
        )
    if threads is not None and threads < 1:
        raise BranchmergeError(f"threads={threads}: must be at least 1")
    n = cores()
    chosen = threads or _env_threads()
    if workload == "grade":
        return ThreadPolicy(workload, 1, chosen or n, sleeping, overlap_io=False)
    if chosen is None:
        if workload == "merge":
            chosen = n if sleeping else max(1, n - 1)
        elif workload == "train":
            chosen = n if sleeping else 1
        else:
            chosen = n if params is not None and params >= SMALL_MODEL else 1
    return ThreadPolicy(workload, chosen, 1, sleeping, overlap_io=workload == "merge")


def apply(workload: Workload, threads: int | None = None, *, params: int | None = None) -> ThreadPolicy:
    """Set torch's intra-op thread count for `workload` in this process; returns the policy applied."""
    import torch

    chosen = policy(workload, threads, params=params)
    if torch.get_num_threads() != chosen.intra_op:
        torch.set_num_threads(chosen.intra_op)
    return chosen


@contextlib.contextmanager
def using(
    workload: Workload, threads: int | None = None, *, params: int | None = None
) -> Iterator[ThreadPolicy]:
    """`apply` for the duration of a block, then torch's earlier thread count again (a library caller's
    own setting survives a merge or a training run)."""
    import torch

    before = torch.get_num_threads()
    try:
        yield apply(workload, threads, params=params)
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def omp_environment(threads: int | None = None) -> dict[str, str]:
    """The variables libgomp, MKL and torch read at start-up: wait policy, and thread counts when given."""
    env = {"OMP_WAIT_POLICY": "PASSIVE" if passive_wait() else "ACTIVE"}
    if env["OMP_WAIT_POLICY"] == "PASSIVE":
        env["KMP_BLOCKTIME"] = "0"  # Intel's OpenMP (a torch built with MKL's iomp reads this one)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def prepare_environment() -> None:
    """Set the OpenMP wait policy for this process; call before torch is imported (the CLI does). A variable
    the user already set is left alone."""
    global _set_after_torch
    if "torch" in sys.modules and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        _set_after_torch = True
    for key, value in omp_environment().items():
        os.environ.setdefault(key, value)


def subprocess_env(
    workload: Workload,
    threads: int | None = None,
    *,
    params: int | None = None,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """An environment for a child process running `workload`: `base` (default os.environ) plus the wait policy
    and the policy's thread count."""
    env = dict(os.environ if base is None else base)
    chosen = policy(workload, threads, params=params, sleeping=passive_wait())
    env.update(omp_environment(chosen.intra_op))
    return env
