"""Hostile programs in the sandbox. Each test checks that the harm did not happen, not only that the run ended.

What is contained depends on the isolation mode this machine allows (see branchmerge.graders.sandbox). Tests for
protections a fallback mode does not give are skipped there, with the reason, rather than weakened.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from branchmerge.graders.sandbox import NAMESPACE_MODES, SandboxResult, isolation, python_argv, run_sandboxed

MODE = isolation()
ISOLATED = MODE in NAMESPACE_MODES
# RLIMIT_NPROC does nothing for root, so in 'plain' mode as root a fork bomb would run free until the timeout.
NPROC_ENFORCED = MODE != "plain" or os.geteuid() != 0
needs_namespaces = pytest.mark.skipif(
    not ISOLATED, reason=f"mode '{MODE}' has no namespaces; the sandbox docstring says this is not prevented"
)
needs_other_uid_or_namespaces = pytest.mark.skipif(
    MODE == "plain", reason="'plain' mode runs the program as the grader's own user: not prevented there"
)


def _run_py(source: str, name: str = "main.py", **kw) -> SandboxResult:
    return run_sandboxed({name: source}, python_argv(name), **kw)


def _procs_with(marker: str) -> list[int]:
    """pids of live processes whose command line contains `marker` (our program names carry one)."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            pids.append(int(pid))
    return pids


def _can_spawn() -> bool:
    return subprocess.run(["true"], check=False).returncode == 0


@pytest.fixture
def marker() -> str:
    return "bmtest" + uuid.uuid4().hex[:12]


def test_runs_a_program_with_files_stdin_and_a_scrubbed_environment(monkeypatch):
    monkeypatch.setenv("BM_GRADER_SECRET", "s3cret-token")
    source = "import os, sys\nprint(open('data.txt').read().upper(), sys.stdin.read(), dict(os.environ))"
    r = run_sandboxed({"main.py": source, "data.txt": "hello"}, python_argv("main.py"), stdin="from stdin")
    assert r.returncode == 0 and not r.timed_out and r.killed_reason is None, r
    assert "HELLO from stdin" in r.stdout
    assert "s3cret-token" not in r.stdout and "BM_GRADER_SECRET" not in r.stdout
    assert r.isolation == MODE
    assert not Path(r.workdir).exists()


@pytest.mark.skipif(not NPROC_ENFORCED, reason="root without namespaces: RLIMIT_NPROC is not enforced")
def test_fork_bomb_is_bounded_by_max_procs_and_leaves_nothing_behind(marker):
    source = (
        "import os, time\n"
        "n = 0\n"
        "while n < 1000:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
        "print('forked', n)\n"
    )
    r = _run_py(source, name=f"{marker}.py", max_procs=8, timeout_s=20)
    assert r.returncode == 0, r
    forked = int(r.stdout.split()[-1])
    assert forked < 8  # the program itself is one of the 8
    assert _procs_with(marker) == []  # the sleeping children did not outlive the run
    assert _can_spawn()


@pytest.mark.skipif(not NPROC_ENFORCED, reason="root without namespaces: RLIMIT_NPROC is not enforced")
def test_exponential_fork_bomb_is_contained_while_the_grader_keeps_spawning(marker):
    source = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result: list[SandboxResult] = []
    runner = threading.Thread(
        target=lambda: result.append(_run_py(source, name=f"{marker}.py", max_procs=16, timeout_s=2))
    )
    runner.start()
    spawned_meanwhile = [_can_spawn() for _ in range(5)]
    runner.join()
    (r,) = result
    assert r.timed_out and r.killed_reason and "timeout" in r.killed_reason
    assert all(spawned_meanwhile)
    assert _procs_with(marker) == []
    assert _can_spawn()
    assert not Path(r.workdir).exists()


@pytest.mark.parametrize("isolate", [True, False], ids=["best-mode", "fallback"])
def test_infinite_loop_times_out_and_its_process_group_is_dead(marker, isolate):
    r = _run_py("while True:\n    pass\n", name=f"{marker}.py", timeout_s=1, cpu_s=30, isolate=isolate)
    assert r.timed_out and r.returncode == -signal.SIGKILL
    assert r.killed_reason == "wall-clock timeout (1 s)"
    assert r.wall_s < 10
    assert _procs_with(marker) == []
    assert not Path(r.workdir).exists()


def test_cpu_limit_ends_a_busy_program_before_the_wall_clock():
    r = _run_py("while True:\n    pass\n", timeout_s=30, cpu_s=1)
    assert not r.timed_out
    assert r.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
    assert r.killed_reason in ("cpu time limit", "killed (SIGKILL: cpu time hard limit, or out of memory)")


@pytest.mark.parametrize("isolate", [True, False], ids=["best-mode", "fallback"])
@pytest.mark.parametrize("ending", ["exits", "times-out"])
def test_a_daemonised_child_dies_with_the_run(marker, isolate, ending):
    """A child that left the process group (setsid) is still killed: by the PID namespace's end, or by the boot
    process, which is the program's subreaper in the modes without one."""
    source = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"  # leaves the process group the timeout kill would reach
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print('parent done', flush=True)\n" + ("time.sleep(60)\n" if ending == "times-out" else "")
    )
    r = _run_py(source, name=f"{marker}.py", isolate=isolate, timeout_s=1.5)
    assert "parent done" in r.stdout
    assert r.timed_out == (ending == "times-out")
    assert _procs_with(marker) == []


def test_memory_bomb_is_stopped_in_the_child_only():
    source = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))\n"
    r = _run_py(source, memory_mb=256, timeout_s=20)  # returns normally: no MemoryError reaches us
    assert r.returncode != 0 and not r.timed_out
    assert "MemoryError" in r.stderr
    assert r.killed_reason == "memory limit (MemoryError)"


def test_output_and_files_are_capped():
    r = _run_py("import sys\nsys.stdout.write('x' * 3_000_000)\n", max_output_kb=64)
    assert r.truncated and len(r.stdout) == 64 * 1024
    r = _run_py("with open('big', 'wb') as f:\n    f.write(b'0' * 5_000_000)\n", file_mb=1)
    assert r.returncode != 0 and r.killed_reason == "file size limit"


@needs_other_uid_or_namespaces
def test_cannot_write_outside_its_folder(tmp_path):
    target = tmp_path / "escaped.txt"
    source = (
        "import sys\n"
        f"for path in [{str(target)!r}, '/escaped-to-root.txt', 'inside.txt']:\n"
        "    try:\n"
        "        open(path, 'w').write('pwned')\n"
        "        print('wrote', path)\n"
        "    except OSError as e:\n"
        "        print('refused', path, type(e).__name__)\n"
    )
    r = _run_py(source)
    assert r.returncode == 0, r
    assert not target.exists()
    assert f"refused {target}" in r.stdout and "wrote inside.txt" in r.stdout
    assert not Path("/escaped-to-root.txt").exists()
    assert not Path(r.workdir).exists()  # and what it wrote inside is gone with the folder


def _home_with_secret(tmp_path: Path, monkeypatch, mode: int) -> tuple[Path, str]:
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    token = uuid.uuid4().hex
    secret = home / ".secret"
    secret.write_text(token)
    secret.chmod(mode)
    monkeypatch.setenv("HOME", str(home))  # the grader's HOME is this fake home
    return secret, token


def test_home_is_not_the_graders(tmp_path, monkeypatch):
    secret, token = _home_with_secret(tmp_path, monkeypatch, 0o644)
    source = (
        "import os\n"
        "print('HOME', os.environ.get('HOME'), os.path.expanduser('~'))\n"
        "try:\n"
        "    print(open(os.path.expanduser('~/.secret')).read())\n"
        "except OSError as e:\n"
        "    print('refused', type(e).__name__)\n"
    )
    r = _run_py(source)
    assert r.returncode == 0, r
    assert str(secret.parent) not in r.stdout
    assert token not in r.stdout and "refused" in r.stdout


@needs_namespaces
def test_cannot_read_the_users_files_by_absolute_path(tmp_path, monkeypatch):
    """World-readable files too: the program's filesystem view does not contain them. (Without a mount namespace
    this is NOT prevented: any file the program's user may read can be read by absolute path.)"""
    secret, token = _home_with_secret(tmp_path, monkeypatch, 0o644)
    source = f"try:\n    print(open({str(secret)!r}).read())\nexcept OSError as e:\n    print('refused', e)\n"
    r = _run_py(source)
    assert r.returncode == 0, r
    assert token not in r.stdout and "refused" in r.stdout


@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def _no_connection_arrived(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


@pytest.mark.parametrize("isolate", [True, False], ids=["best-mode", "fallback-audit-hook"])
def test_python_cannot_open_a_socket(listener, isolate):
    port = listener.getsockname()[1]
    source = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print('blocked', type(e).__name__, e)\n"
    )
    r = _run_py(source, isolate=isolate)
    assert r.returncode == 0, r
    assert "connected" not in r.stdout and "blocked" in r.stdout
    assert _no_connection_arrived(listener)


@needs_namespaces
def test_a_non_python_program_cannot_reach_the_network(listener):
    """The audit hook only guards Python; the network namespace guards everything."""
    port = listener.getsockname()[1]
    r = run_sandboxed({}, ["bash", "-c", f"echo hi > /dev/tcp/127.0.0.1/{port} && echo connected"])
    assert "connected" not in r.stdout and r.returncode != 0
    assert _no_connection_arrived(listener)


def test_killing_its_parent_does_not_reach_the_grader():
    """The program's parent is the sandbox's own supervisor (init of its PID namespace, or the boot process),
    never this process."""
    source = "import os, signal\nprint('parent', os.getppid(), flush=True)\nos.kill(os.getppid(), signal.SIGKILL)\n"
    r = _run_py(source)
    assert f"parent {os.getpid()}" not in r.stdout
    assert os.getpid() > 0  # still here; had the kill reached pytest, this run would have died


@needs_other_uid_or_namespaces
def test_cannot_signal_the_graders_other_processes():
    victim = subprocess.Popen(["sleep", "60"])
    try:
        source = (
            "import os, signal\n"
            f"for pid in ({victim.pid}, {os.getpid()}):\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n"
            "        print('killed', pid)\n"
            "    except OSError as e:\n"
            "        print('refused', pid, type(e).__name__)\n"
        )
        r = _run_py(source)
        assert r.returncode == 0, r
        assert victim.poll() is None  # the victim is still alive
        assert "killed" not in r.stdout
    finally:
        victim.kill()
        victim.wait()


def test_temporary_folder_is_removed_after_every_run():
    runs = [
        _run_py("open('left.txt', 'w').write('x')\n"),
        _run_py("raise SystemExit(3)\n"),
        _run_py("import time\ntime.sleep(30)\n", timeout_s=0.5),
    ]
    assert [r.returncode for r in runs[:2]] == [0, 3] and runs[2].timed_out
    for r in runs:
        assert not Path(r.workdir).parent.exists()


def test_bad_file_names_are_refused():
    with pytest.raises(ValueError, match="relative path"):
        run_sandboxed({"../x.py": ""}, ["true"])
    with pytest.raises(ValueError, match="relative path"):
        run_sandboxed({"/etc/x": ""}, ["true"])


@needs_namespaces
def test_read_only_folders_under_the_hosts_tmp_stay_visible(tmp_path, monkeypatch):
    """A virtualenv in a checkout under /tmp (as CI clones are) must not be hidden by the private /tmp."""
    import branchmerge.graders.sandbox as sandbox

    shared = tmp_path / "venv-like"
    shared.mkdir()
    (shared / "marker.txt").write_text("visible")
    assert str(shared).startswith("/tmp/")
    binds = sandbox._ro_binds()
    monkeypatch.setattr(sandbox, "_ro_binds", lambda: [*binds, str(shared)])
    r = _run_py(f"print(open({str(shared / 'marker.txt')!r}).read())")
    assert r.returncode == 0 and r.stdout.strip() == "visible", r.stderr
    w = _run_py(f"open({str(shared / 'new.txt')!r}, 'w')")
    assert w.returncode != 0 and not (shared / "new.txt").exists()  # read-only
