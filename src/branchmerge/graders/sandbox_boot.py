"""The sandbox's first process: namespaces, a private filesystem view, limits, then the program.

`sandbox.run_sandboxed` runs this file as `python -I -S sandbox_boot.py CONFIG_JSON`. It is a fresh interpreter
rather than a `preexec_fn`, so the set-up is safe when the grader has threads, and it can fork: a PID namespace
needs an init process. Standard library only; nothing from branchmerge is imported (the path is not set up).

Process tree (the grader only ever starts `boot`):
  namespace modes:  grader -> boot (makes the namespaces) -> init (pid 1: mounts, pivot_root, waits) -> program
  other modes:      grader -> boot (the program's subreaper: waits, then kills all it left) -> program
Status lines on fd `status_fd`, one short `os.write` each (atomic on a pipe): `init PID` (namespace modes),
then `exit N`, `signal N`, or `error MESSAGE` when the set-up failed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import resource
import signal
import sys
from typing import Any

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = (
    1,
    4,
    24,
    36,
    38,
)
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
# Device nodes the program may use; bind-mounted from the host (a user namespace cannot mknod).
DEVICES = ("null", "zero", "full", "random", "urandom")

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if s is None else s.encode() for s in (src, target, fstype, data)]
    _check(libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {target}")


def _prctl(option: int, arg: int = 0, arg3: int = 0) -> None:
    args = (ctypes.c_ulong(a) for a in (arg, arg3, 0, 0))
    _check(libc.prctl(option, *args), "prctl")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


def drop_capabilities() -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable sets; forbid gaining privileges."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        _prctl(PR_CAPBSET_DROP, cap)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3: two data structs, here all zero
    _check(libc.capset(ctypes.byref(header), (_CapData * 2)()), "capset")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def _locked_flags(path: str) -> int:
    """Flags a bind remount must keep (a user namespace may not clear nosuid/nodev/noexec/atime flags)."""
    f = os.statvfs(path).f_flag
    flags = f & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    return flags | (MS_RELATIME if f & 4096 else 0)  # ST_RELATIME


def _bind(src: str, root: str, dst: str, writable: bool) -> None:
    """Mirror `src` at root+dst: symlinks are copied as symlinks, files and folders bind-mounted."""
    target = root + dst
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    if os.path.islink(src):
        os.symlink(os.readlink(src), target)
        return
    if os.path.isdir(src):
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        open(target, "w").close()
    _mount(src, target, None, MS_BIND | MS_REC)
    ro = 0 if writable else MS_RDONLY
    _mount(None, target, None, MS_REMOUNT | MS_BIND | ro | MS_NOSUID | MS_NODEV | _locked_flags(target))


def build_root(cfg: dict[str, Any]) -> None:
    """Make a tmpfs root holding only read-only system and Python folders, /dev nodes, a fresh /proc, a private
    /tmp and the work folder at /sandbox, then pivot_root into it and detach the host tree entirely (so no chroot
    trick can climb back out)."""
    root = cfg["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount may propagate to the host
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    # The private /tmp first: a virtualenv or interpreter that lives under the host's /tmp (a CI checkout) is then
    # bound on top of it instead of being hidden by it.
    size = f"size={cfg['tmpfs_mb']}m,mode=1777"
    os.makedirs(root + "/tmp", mode=0o755)
    _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, size)
    for src in cfg["ro_binds"]:
        if os.path.lexists(src):
            _bind(src, root, src, writable=False)
    _bind(cfg["workdir"], root, "/sandbox", writable=True)
    os.makedirs(root + "/dev", mode=0o755)
    _mount("tmpfs", root + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    for dev in DEVICES:
        _bind("/dev/" + dev, root, "/dev/" + dev, writable=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, f"{root}/dev/{name}")
    os.makedirs(root + "/dev/shm", mode=0o755, exist_ok=True)
    _mount("tmpfs", root + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, size)
    os.makedirs(root + "/proc", mode=0o755, exist_ok=True)
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(root)
    _check(libc.syscall(SYS_PIVOT_ROOT[platform.machine()], b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _set_limits(cfg: dict[str, Any]) -> None:
    mib = 1024 * 1024
    limits = {
        resource.RLIMIT_CPU: (cfg["cpu_s"], cfg["cpu_s"] + 1),  # SIGXCPU at the soft limit, SIGKILL 1 s later
        resource.RLIMIT_AS: (cfg["memory_mb"] * mib,) * 2,
        resource.RLIMIT_FSIZE: (cfg["file_mb"] * mib,) * 2,
        resource.RLIMIT_NPROC: (cfg["nproc"],) * 2,
        resource.RLIMIT_CORE: (0, 0),
        resource.RLIMIT_NOFILE: (512, 512),
    }
    for which, (soft, hard) in limits.items():
        resource.setrlimit(which, (soft, hard))


def _user_tasks(uid: int) -> int:
    """Tasks (processes and threads: RLIMIT_NPROC counts both) the real user `uid` owns now."""
    n = 0
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == uid:
                n += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return n


def _exec_program(cfg: dict[str, Any]) -> None:
    """In the program's process: limits, identity, no capabilities, then exec. Never returns."""
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        if cfg["mode"] == "plain":
            # a per-user count: allow max_procs more than now (this process already counts as one of them)
            cfg["nproc"] += _user_tasks(os.getuid()) - 1
        _set_limits(cfg)
        if cfg["uid"] is not None:  # root-ns / uid modes: become the run's own unprivileged user
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])
        if cfg["mode"] == "user-ns":
            drop_capabilities()
        elif cfg["uid"] is not None:
            _prctl(PR_SET_NO_NEW_PRIVS, 1)
        os.chdir(cfg["cwd"])
        argv = cfg["argv"]
        os.execvpe(argv[0], argv, os.environ)
    except OSError as e:
        os.write(2, f"sandbox: cannot run {cfg['argv'][0]!r}: {e}\n".encode())
    os._exit(127)


def _supervise(child: int, status_fd: int) -> None:
    """Wait for the program (reaping orphans when we are pid 1) and report how it ended."""
    while True:
        pid, status = os.wait()
        if pid == child:
            break
    if os.WIFSIGNALED(status):
        os.write(status_fd, f"signal {os.WTERMSIG(status)}\n".encode())
    else:
        os.write(status_fd, f"exit {os.WEXITSTATUS(status)}\n".encode())


def _kill_descendants() -> None:
    """Modes without a PID namespace: kill whatever the program left running. We are its subreaper, so orphans
    (those that called setsid() too) become our children; kill our children round by round until none is left."""
    me = str(os.getpid())
    while True:
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = f.read().rsplit(")", 1)[1].split()[1]  # "pid (comm) state ppid ..."
                if ppid == me:
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                continue
        try:
            os.waitpid(-1, 0)  # returns once a killed child is gone; its orphans are ours by then
        except ChildProcessError:
            return


def _init(cfg: dict[str, Any], status_fd: int) -> None:
    """pid 1 of the new PID namespace. When it exits the kernel kills everything left in the namespace."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)  # for pid 1, "default" means signals from inside are ignored
    try:
        os.umask(0o022)
        build_root(cfg)
    except OSError as e:
        os.write(status_fd, f"error {e}\n".encode())
        os._exit(1)
    if cfg["mode"] == "user-ns":
        # Best effort, belt and braces: no nested user namespaces. Their capabilities would be harmless after
        # pivot_root, but the program has no use for them.
        try:
            with open("/proc/sys/user/max_user_namespaces", "w") as f:
                f.write("0")
        except OSError:
            pass
    child = os.fork()
    if child == 0:
        _exec_program(cfg)
    drop_capabilities()  # nothing left to set up; a compromised init would hold nothing
    _prctl(PR_SET_DUMPABLE, 0)
    _supervise(child, status_fd)
    os._exit(0)


def _enter_namespaces(cfg: dict[str, Any]) -> None:
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if cfg["mode"] == "user-ns":
        uid, gid = os.geteuid(), os.getegid()
        _check(libc.unshare(flags | CLONE_NEWUSER), "unshare")
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    else:  # root-ns: the grader is root, so no user namespace is needed (mapping root into one is unsafe)
        _check(libc.unshare(flags), "unshare")


def main() -> None:
    cfg = json.loads(sys.argv[1])
    status_fd = cfg["status_fd"]
    os.set_inheritable(status_fd, False)  # the program must not hold it
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the grader went away: take everything down
    if cfg["mode"] in ("root-ns", "user-ns"):
        try:
            _enter_namespaces(cfg)
        except OSError as e:
            os.write(status_fd, f"error {e}\n".encode())
            sys.exit(1)
        init = os.fork()
        if init == 0:
            _init(cfg, status_fd)
        os.write(status_fd, f"init {init}\n".encode())
        os.waitpid(init, 0)
        sys.exit(0)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    child = os.fork()
    if child == 0:
        _exec_program(cfg)

    def on_timeout(
        signum: int, frame: object
    ) -> None:  # the grader's SIGTERM: stop the program, then clean up
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_timeout)
    _supervise(child, status_fd)
    _kill_descendants()


if __name__ == "__main__":
    main()
