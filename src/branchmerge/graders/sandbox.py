"""Run untrusted programs (model-written code and SQL) with limits, no network, and a private filesystem view.

`run_sandboxed(files, argv)` writes `files` into a fresh temporary folder, runs `argv` there and returns a
`SandboxResult`. The folder is removed afterwards, also after a timeout. `python_argv(script)` builds the argv for
a Python program (`sys.executable -I -B`, behind the network audit hook below).

What protects the grader depends on what the machine allows; `isolation()` probes once per process, in order, and
picks the first mode that works (`isolation(False)` skips the namespace modes, for tests of the fallbacks):

| mode | when | what it adds |
|---|---|---|
| `root-ns` | grader runs as root | new mount, network, PID, IPC and UTS namespaces; the program runs as a fresh unprivileged uid (random per run, no capabilities, `no_new_privs`) |
| `user-ns` | not root, unprivileged user namespaces allowed | the same namespaces inside a new user namespace mapping only our own uid; every capability dropped before exec |
| `uid` | root, no namespaces, the interpreter readable by other users | the fresh unprivileged uid only |
| `plain` | otherwise | rlimits, scrubbed environment, process group, audit hook |

In the namespace modes (this machine when tested: `root-ns`):
- files: the program sees a tmpfs root holding only /usr, /bin, /lib*, a few world-readable /etc files, the
  Python installation and virtualenv (all read-only), /dev/{null,zero,full,random,urandom}, a fresh /proc, a
  private /tmp and /dev/shm (tmpfs, each capped at `memory_mb`) and its work folder at /sandbox. It cannot read home folders, other /tmp
  folders or the grader's files, and it can write only to /sandbox, /tmp and /dev/shm. The host tree is detached
  after `pivot_root`, so no chroot trick climbs back out.
- network: a new network namespace with no interfaces up: nothing, not even 127.0.0.1, is reachable.
- processes: it is pid 2 of its own PID namespace; the grader and every other process are invisible, so it cannot
  signal or ptrace them (`os.getppid()` is our init, which ignores signals from inside). When the program ends,
  init exits and the kernel kills whatever the program left behind, including processes that called `setsid()`.
- fork bombs: RLIMIT_NPROC counts per user, and here the user is the run's own (the random uid, or the pair
  (new user namespace, uid)), so `max_procs` bounds this program's processes and threads without touching the
  grader's, and the grader can still spawn processes while a bomb runs.

Without a PID namespace (`uid`, `plain`) the boot process is the program's subreaper: when the program ends, or
the grader's timeout asks it to, it kills every descendant, also those that called `setsid()`; in `uid` mode the
grader then kills every process of the run's uid as well.

Always, in every mode: RLIMIT_CPU (`cpu_s`: SIGXCPU, then SIGKILL a second later), RLIMIT_AS (`memory_mb`: Python
raises MemoryError in the child, never in the grader), RLIMIT_FSIZE (`file_mb`, also caps stdout/stderr, which go
to files and are read back up to `max_output_kb`), RLIMIT_CORE 0, RLIMIT_NOFILE 512; a new session, and on timeout
SIGKILL to the whole process group; a scrubbed environment (minimal PATH, HOME = the work folder, no variables of
the grader); for Python programs an audit hook that raises PermissionError on creating a non-Unix socket or
resolving a name (a tripwire for Python code only; ctypes or a child program get around it).

What the fallback modes do NOT prevent (said again by the warning `isolation()` gives when it falls back):
- `uid`: reading world-readable files anywhere by absolute path; network access from non-Python programs.
- `plain`: reading and writing anything the grader's user may; signalling the grader's other processes (the
  program's parent is the boot process, not the grader, but any same-user pid can be named); network access from
  non-Python programs; a program that first kills its boot process can leave `setsid()` children running.
  RLIMIT_NPROC is then "the user's current task count + max_procs", a race with other work of the same user; as
  root it is not enforced at all (the kernel exempts root), so fork bombs are bounded only by the timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

BOOT = Path(__file__).with_name("sandbox_boot.py")
NAMESPACE_MODES = ("root-ns", "user-ns")
# Read-only inside the namespace modes, besides the Python installation (all world-readable system files).
SYSTEM_PATHS = (
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc/alternatives", "/etc/ld.so.cache",
    "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf",
    "/etc/hosts",
)  # fmt: skip
INSIDE_WORKDIR = "/sandbox"

# Runs before the program in the same interpreter; audit hooks cannot be removed once added (PEP 578).
_PY_GUARD = """\
import os, sys
def _guard(event, args):
    if event == "socket.__new__" and args[1] != 1 or event in ("socket.getaddrinfo", "socket.gethostbyname"):
        raise PermissionError("sandbox: network access is blocked")
sys.addaudithook(_guard)
del _guard
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
import runpy
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (not a failure of the program)."""


@dataclass(frozen=True)
class SandboxResult:
    returncode: int  # negative: killed by that signal (as in subprocess); -9 after a timeout
    stdout: str
    stderr: str
    timed_out: bool
    # why it was stopped: "wall-clock timeout (2 s)", "cpu time limit", "memory limit (MemoryError)", ...
    killed_reason: str | None
    truncated: bool  # stdout or stderr was longer than max_output_kb
    isolation: str  # the mode used (see the module docstring)
    wall_s: float
    workdir: str  # the temporary folder, already removed


def python_argv(script: str, *args: str) -> list[str]:
    """argv for running `script` (a file in the work folder) with this interpreter behind the network guard."""
    return [sys.executable, "-I", "-B", "-c", _PY_GUARD, script, *args]


def run_sandboxed(
    files: Mapping[str, str | bytes],
    argv: list[str],
    *,
    stdin: str = "",
    timeout_s: float = 10,
    cpu_s: int = 5,
    memory_mb: int = 512,
    file_mb: int = 16,
    max_procs: int = 64,
    max_output_kb: int = 1024,
    env: Mapping[str, str] | None = None,
    isolate: bool = True,
) -> SandboxResult:
    """Run `argv` in a fresh folder holding `files` (relative paths), under the best isolation available.

    `max_procs` counts processes and threads of the program (RLIMIT_NPROC counts tasks). `env` adds variables to
    the scrubbed environment. Raises SandboxError only when the sandbox cannot be built.
    """
    mode = isolation(isolate)
    limits = {"cpu_s": cpu_s, "memory_mb": memory_mb, "file_mb": file_mb, "max_procs": max_procs}
    return _run(mode, files, argv, stdin, timeout_s, limits, max_output_kb * 1024, dict(env or {}))


_modes: dict[bool, str] = {}
_modes_lock = threading.Lock()


def isolation(isolate: bool = True) -> str:
    """The mode `run_sandboxed` uses here, probed once per process (a trivial run in each candidate mode)."""
    with _modes_lock:
        if isolate not in _modes:
            _modes[isolate] = _choose_mode(isolate)
        return _modes[isolate]


def _choose_mode(isolate: bool) -> str:
    root = os.geteuid() == 0
    candidates = [("root-ns" if root else "user-ns")] if isolate else []
    candidates += ["uid"] if root else []
    failures = []
    for mode in candidates:
        try:
            probe = _run(mode, {}, _PROBE_ARGV, "", 30, _PROBE_LIMITS, 4096, {})
        except (SandboxError, OSError) as e:
            failures.append(f"{mode}: {e}")
            continue
        if probe.returncode == 0:
            return mode
        failures.append(f"{mode}: probe exited {probe.returncode}: {probe.stderr.strip()[-200:]}")
    if isolate:
        warnings.warn(
            "sandbox: no namespace isolation on this machine ("
            + "; ".join(failures)
            + "); running untrusted code in 'plain' mode: limits and a Python network guard only, no protection "
            "of the user's files or processes (see branchmerge.graders.sandbox)",
            RuntimeWarning,
            stacklevel=3,
        )
    return "plain"


_PROBE_ARGV = [sys.executable, "-I", "-S", "-c", "pass"]
_PROBE_LIMITS = {"cpu_s": 10, "memory_mb": 512, "file_mb": 1, "max_procs": 8}


def _run(
    mode: str,
    files: Mapping[str, str | bytes],
    argv: list[str],
    stdin: str,
    timeout_s: float,
    limits: dict[str, int],
    max_output: int,
    extra_env: dict[str, str],
) -> SandboxResult:
    namespaced = mode in NAMESPACE_MODES
    base = Path(tempfile.mkdtemp(prefix="bm-sandbox-"))
    try:
        uid = _prepare_folder(base, files, mode)
        cwd = INSIDE_WORKDIR if namespaced else str(base / "work")
        (base / "stdin").write_text(stdin)
        status_r, status_w = os.pipe()
        cfg = {
            "mode": mode,
            "argv": argv,
            "cwd": cwd,
            "uid": uid,
            "status_fd": status_w,
            "workdir": str(base / "work"),
            "root": str(base / "root"),
            "ro_binds": _ro_binds(),
            "tmpfs_mb": limits["memory_mb"],
            "cpu_s": limits["cpu_s"],
            "memory_mb": limits["memory_mb"],
            "file_mb": limits["file_mb"],
            # in user-ns mode the boot and init processes count in the namespace's task count too
            "nproc": limits["max_procs"] + (2 if mode == "user-ns" else 0),
        }
        env = _environment(cwd, "/tmp" if namespaced else str(base / "tmp"), extra_env)
        t0 = time.monotonic()
        with (
            open(base / "stdin", "rb") as fin,
            open(base / "stdout", "wb") as fout,
            open(base / "stderr", "wb") as ferr,
        ):
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", str(BOOT), json.dumps(cfg)],
                    stdin=fin,
                    stdout=fout,
                    stderr=ferr,
                    cwd=base,
                    env=env,
                    pass_fds=(status_w,),
                    start_new_session=True,
                )
            finally:
                os.close(status_w)
        timed_out = _wait_and_clean_up(proc, timeout_s, namespaced)
        status = _read_status(status_r)
        if "init" in status:
            _wait_gone(int(status["init"]), 5.0)  # init's exit takes the whole PID namespace with it
        if uid is not None and mode == "uid":
            _kill_user(uid)
        wall_s = time.monotonic() - t0
        if "error" in status:
            raise SandboxError(f"sandbox set-up failed in mode '{mode}': {status['error']}")
        stdout, cut_out = _read_capped(base / "stdout", max_output)
        stderr, cut_err = _read_capped(base / "stderr", max_output)
    finally:
        _remove(base)
    if timed_out:
        returncode = -signal.SIGKILL
    elif "exit" in status or "signal" in status:
        returncode = int(status["exit"]) if "exit" in status else -int(status["signal"])
    else:  # the program killed its supervisor (plain modes) or the boot died: report what we saw
        returncode = proc.returncode if proc.returncode != 0 else -signal.SIGKILL
    reason = _killed_reason(returncode, timed_out, timeout_s, stderr, "exit" in status or "signal" in status)
    return SandboxResult(
        returncode, stdout, stderr, timed_out, reason, cut_out or cut_err, mode, wall_s, str(base / "work")
    )


def _prepare_folder(base: Path, files: Mapping[str, str | bytes], mode: str) -> int | None:
    """base/{work,tmp} (plus root/, the mount point of the new root), the files written; returns the run's own
    uid in the modes that use one, having given it work/ and tmp/."""
    os.chmod(base, 0o711)  # the run's uid must be able to reach work/ and tmp/ (0700, its own)
    work, tmp = base / "work", base / "tmp"
    work.mkdir(0o700)
    tmp.mkdir(0o700)
    _write_files(work, files)
    if mode in NAMESPACE_MODES:
        (base / "root").mkdir(0o700)
    if mode not in ("root-ns", "uid"):
        return None
    uid = 1_500_000_000 + secrets.randbelow(500_000_000)  # far above any real account's uid
    for path in (work, tmp, *work.rglob("*")):
        os.lchown(path, uid, uid)
    return uid


def _environment(home: str, tmp: str, extra: dict[str, str]) -> dict[str, str]:
    """The program's whole environment: nothing of the grader's is passed on."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": tmp,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        **extra,
    }


def _wait_and_clean_up(proc: subprocess.Popen[bytes], timeout_s: float, namespaced: bool) -> bool:
    """Wait for the boot process; on timeout stop everything. Returns whether the time ran out."""
    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        if not namespaced:  # let the boot kill the program and all its descendants (see sandbox_boot.py)
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
    _kill_group(proc.pid)  # always: the timed-out program, or what it left running in our group
    proc.wait()
    return timed_out


def _write_files(work: Path, files: Mapping[str, str | bytes]) -> None:
    for name, content in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"sandbox file name {name!r} must be a relative path inside the work folder")
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def _ro_binds() -> list[str]:
    """System paths plus this interpreter's installation and virtualenv, nested duplicates removed."""
    paths = list(SYSTEM_PATHS)
    python = (
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(sys.executable),
    )
    for p in python:
        paths += [os.path.abspath(p), os.path.realpath(p)]
    out: list[str] = []
    for p in sorted(set(paths), key=len):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out


def _read_status(fd: int) -> dict[str, str]:
    """Parse the boot's status lines (see sandbox_boot.py) from whatever the pipe holds now."""
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    status = {}
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        key, _, value = line.partition(" ")
        status[key] = value
    return status


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _wait_gone(pid: int, timeout_s: float) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return
    try:
        select.select([fd], [], [], timeout_s)
    finally:
        os.close(fd)


def _kill_user(uid: int) -> None:
    """Kill every process of the run's own uid (uid mode: no PID namespace does it for us). A few rounds, since a
    process may fork between the scan and the kill; RLIMIT_NPROC bounds how many there can be."""
    for _ in range(50):
        found = False
        for pid in os.listdir("/proc"):
            try:
                if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == uid:
                    os.kill(int(pid), signal.SIGKILL)
                    found = True
            except OSError:
                continue
        if not found:
            return
        time.sleep(0.01)


def _read_capped(path: Path, limit: int) -> tuple[str, bool]:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    return data[:limit].decode(errors="replace"), len(data) > limit


def _killed_reason(code: int, timed_out: bool, timeout_s: float, stderr: str, reported: bool) -> str | None:
    if timed_out:
        return f"wall-clock timeout ({timeout_s:g} s)"
    if not reported:
        return "the sandbox's supervisor was killed"
    if code == -signal.SIGXCPU:
        return "cpu time limit"
    if code == -signal.SIGXFSZ or "File too large" in stderr[-500:]:
        return "file size limit"
    if code == -signal.SIGKILL:
        return "killed (SIGKILL: cpu time hard limit, or out of memory)"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    if code != 0 and "MemoryError" in stderr[-500:]:
        return "memory limit (MemoryError)"
    return None


def _remove(base: Path) -> None:
    for _ in range(5):  # a process that was still dying may have been writing a file a moment ago
        shutil.rmtree(base, ignore_errors=True)
        if not base.exists():
            return
        time.sleep(0.05)
    shutil.rmtree(base)  # raise with the reason
