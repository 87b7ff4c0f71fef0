"""The engine choice and vLLM's process lifecycle, driven on a CPU by a stand-in executable (`engine_standin.py`)
launched through the same code path as vLLM: ready, crash, timeout, busy port, missing engine, and no process
left behind after success, an error, Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, Trace, read_jsonl
from branchmerge.teachers.client import generate_traces
from branchmerge.teachers.config import TeacherConfig
from branchmerge.teachers.engines import VllmOptions, resolve_engine, serve_checkpoint, vllm_installed

STANDIN = str(Path(__file__).with_name("engine_standin.py"))


def standin(tmp_path: Path, *flags: str, **kw) -> VllmOptions:
    args = ("--pidfile", str(tmp_path / "pid"), "--child-pidfile", str(tmp_path / "child"), *flags)
    kw.setdefault("ready_timeout_s", 30)
    kw.setdefault("grace_s", 5)
    return VllmOptions(command=(sys.executable, STANDIN), args=args, log_path=tmp_path / "engine.log", **kw)


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may wait a while for a reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def assert_gone(tmp_path: Path) -> None:
    pids = [int((tmp_path / f).read_text()) for f in ("pid", "child")]
    deadline = time.monotonic() + 5
    while any(running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(running(p) for p in pids), f"left running: {[p for p in pids if running(p)]}"


def test_engine_names_and_the_auto_choice() -> None:
    assert resolve_engine("builtin") == "builtin"
    with pytest.raises(
        BranchmergeError, match=r"--engine: 'vlm' is not an engine \(known: auto, builtin, vllm\)"
    ):
        resolve_engine("vlm", "--engine")
    import torch

    expected = "vllm" if vllm_installed() and torch.cuda.is_available() else "builtin"
    assert resolve_engine("auto") == expected
    # A command of the caller's stands for the installation; auto still needs a GPU.
    assert resolve_engine("auto", command_given=True) == ("vllm" if torch.cuda.is_available() else "builtin")
    assert resolve_engine("vllm", command_given=True) == "vllm"


@pytest.mark.skipif(vllm_installed(), reason="vLLM is installed here")
def test_missing_vllm_is_one_line_with_the_install_command(tiny_model_dir: Path) -> None:
    with (
        pytest.raises(BranchmergeError) as e,
        serve_checkpoint(tiny_model_dir, engine="vllm", what="--engine"),
    ):
        pass
    assert "--engine vllm: vLLM is not installed" in str(e.value)
    assert "pip install 'branchmerge[vllm]'" in str(e.value)
    assert "\n" not in str(e.value)


def test_auto_on_a_machine_without_vllm_serves_with_the_builtin_server(tiny_model_dir: Path) -> None:
    if resolve_engine("auto") != "builtin":
        pytest.skip("vLLM and a GPU are here: auto picks vLLM")
    with serve_checkpoint(tiny_model_dir, engine="auto", model_name="tiny") as url:
        health = httpx.get(url.removesuffix("/v1") + "/health").json()
        assert health["model"] == "tiny" and "queued_rows" in health  # the built-in server's own fields


def test_ready_server_answers_our_client_and_stops_cleanly(tiny_model_dir: Path, tmp_path: Path) -> None:
    problems = [Problem(id="p1", domain="d", question="abc 123", reference="x", grader={"type": "exact"})]
    opts = standin(tmp_path, "--delay", "0.3")
    with serve_checkpoint(tiny_model_dir, engine="vllm", model_name="student", vllm=opts) as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        pid = int((tmp_path / "pid").read_text())
        assert running(pid)
        cfg = TeacherConfig(name="student", base_url=url, model="student", max_retries=0)
        generate_traces(problems, cfg, tmp_path / "traces.jsonl", n=2, show_progress=False)
    [t0, t1] = read_jsonl(tmp_path / "traces.jsonl", Trace)
    assert (t0.answer, t0.reasoning, t1.sample) == ("321 cba", "stand-in", 1)
    assert_gone(tmp_path)
    log = (tmp_path / "engine.log").read_text()
    assert f"loading {tiny_model_dir} as student" in log  # the arguments vLLM would get reached the program
    assert "POST /v1/chat/completions" in log


def test_crash_before_ready_shows_the_log(tiny_model_dir: Path, tmp_path: Path) -> None:
    with (
        pytest.raises(BranchmergeError, match="exited with code 3 before it was ready") as e,
        serve_checkpoint(tiny_model_dir, engine="vllm", vllm=standin(tmp_path, "--crash")),
    ):
        pass
    assert "RuntimeError: stand-in crash while loading weights" in str(e.value)
    assert str(tmp_path / "engine.log") in str(e.value)
    assert_gone(tmp_path)  # its worker too


def test_readiness_timeout_stops_the_server(tiny_model_dir: Path, tmp_path: Path) -> None:
    opts = standin(tmp_path, "--never-ready", ready_timeout_s=1.5)
    t0 = time.monotonic()
    with (
        pytest.raises(BranchmergeError, match=r"not ready after 1.5 s") as e,
        serve_checkpoint(tiny_model_dir, engine="vllm", vllm=opts),
    ):
        pass
    assert 1.5 <= time.monotonic() - t0 < 15
    assert "stand-in: listening on" in str(e.value)
    assert_gone(tmp_path)


def test_busy_port_is_refused_before_launch(tiny_model_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with (
            pytest.raises(BranchmergeError, match=f"port {port} on 127.0.0.1 is already in use"),
            serve_checkpoint(tiny_model_dir, engine="vllm", port=port, vllm=standin(tmp_path)),
        ):
            pass
    assert not (tmp_path / "engine.log").exists()  # nothing was started


def test_a_missing_program_is_one_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    opts = VllmOptions(command=(str(tmp_path / "no-such-vllm"),), log_path=tmp_path / "log")
    with (
        pytest.raises(BranchmergeError, match="cannot start the server .*no-such-vllm.*No such file"),
        serve_checkpoint(tiny_model_dir, engine="vllm", vllm=opts),
    ):
        pass


def test_an_error_in_the_block_stops_the_server(tiny_model_dir: Path, tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="stage failed"),
        serve_checkpoint(tiny_model_dir, engine="vllm", vllm=standin(tmp_path)),
    ):
        raise RuntimeError("stage failed")
    assert_gone(tmp_path)


def test_ctrl_c_stops_a_server_that_ignores_sigterm(tiny_model_dir: Path, tmp_path: Path) -> None:
    opts = standin(tmp_path, "--ignore-sigterm", grace_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt), serve_checkpoint(tiny_model_dir, engine="vllm", vllm=opts):
        t0 = time.monotonic()
        raise KeyboardInterrupt
    assert time.monotonic() - t0 >= 0.5  # SIGTERM was ignored; SIGKILL came after the grace period
    assert_gone(tmp_path)


@pytest.mark.skipif(
    signal.getsignal(signal.SIGTERM) != signal.SIG_DFL, reason="a SIGTERM handler is installed"
)
def test_sigterm_to_this_process_stops_the_server(tiny_model_dir: Path, tmp_path: Path) -> None:
    with (
        pytest.raises(SystemExit) as e,
        serve_checkpoint(tiny_model_dir, engine="vllm", vllm=standin(tmp_path)),
    ):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert e.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert_gone(tmp_path)


def test_default_log_is_named_for_the_served_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    import tempfile

    opts = VllmOptions(command=(sys.executable, STANDIN), ready_timeout_s=30, grace_s=5)
    with serve_checkpoint(tiny_model_dir, engine="vllm", model_name="Org/Model", vllm=opts) as url:
        port = url.removesuffix("/v1").rsplit(":", 1)[1]
        assert httpx.get(url + "/models").json()["data"][0]["id"] == "Org/Model"
    log = Path(tempfile.gettempdir()) / f"branchmerge-vllm-Org_Model-{port}.log"
    try:
        assert f"loading {tiny_model_dir} as Org/Model" in log.read_text()
    finally:
        log.unlink(missing_ok=True)


def test_builtin_server_in_its_own_process_answers_and_stops(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`own_process`: `branchmerge serve` as a child (its decoding off this process's GIL), the same answers as
    the in-thread server, and the child is gone after the block."""
    problems = [Problem(id="p1", domain="d", question="abc 123", reference="x", grader={"type": "exact"})]
    outs = {}
    for own in (False, True):
        with serve_checkpoint(tiny_model_dir, engine="builtin", model_name="tiny", own_process=own) as url:
            health = httpx.get(url.removesuffix("/v1") + "/health").json()
            assert health["model"] == "tiny"
            cfg = TeacherConfig(name="tiny", base_url=url, model="tiny", max_retries=0)
            out = tmp_path / f"own-{own}.jsonl"
            generate_traces(problems, cfg, out, n=2, max_tokens=8, seed=3, show_progress=False)
            outs[own] = [(t.sample, t.reasoning, t.answer) for t in read_jsonl(out, Trace)]
        port = int(url.removesuffix("/v1").rsplit(":", 1)[1])
        with pytest.raises(OSError):  # nothing listens there any more
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert sorted(outs[True]) == sorted(outs[False])  # seeded per request: the same tokens either way


def test_own_process_server_takes_only_the_batch_size(tiny_model_dir: Path) -> None:
    with (
        pytest.raises(TypeError, match="batch_wait_s"),
        serve_checkpoint(tiny_model_dir, engine="builtin", own_process=True, batch_wait_s=0.5),
    ):
        pass


def test_a_server_started_for_a_process_exits_when_that_process_is_killed(tmp_path: Path) -> None:
    """kill -9 of the caller cannot stop its server, so the server watches its parent (`--parent-pid`)."""
    child = (
        "import sys, time; from branchmerge.teachers.serve import watch_parent; "
        "watch_parent(int(sys.argv[1]), 0.05); print('watching', flush=True); time.sleep(60)"
    )
    parent = (
        "import os, subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid())]); print(p.pid, flush=True); "
        "time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    server_pid = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == "watching"  # the child's line, through the inherited pipe
    assert running(server_pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while running(server_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(server_pid)
