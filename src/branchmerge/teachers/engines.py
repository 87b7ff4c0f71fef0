"""Serve a local checkpoint with the chosen engine: the built-in transformers server (`serve.py`) or vLLM.

`engine` is "builtin", "vllm" or "auto": vLLM when it is importable here and torch sees a CUDA device, else the
built-in server. Both answer the same OpenAI chat API on 127.0.0.1, so every caller gets a base URL and nothing
else changes.

vLLM runs as a managed child process (its OpenAI-compatible server, https://docs.vllm.ai/en/latest/serving/
openai_compatible_server.html) in a process group of its own, so its worker processes are stopped with it:
- the port is checked before launch (a taken port is one clear error, not a crash in the child's log);
- its output goes to a log file; readiness is `/health` answering 200 and `/v1/models` listing the served name;
  the wait ends early with the log's last lines when the process exits, and after `ready_timeout_s`;
- on leaving the block (success, error, Ctrl-C, or SIGTERM to this process) the group gets SIGTERM, then
  SIGKILL after `grace_s`.
The built-in server runs in a thread of this process by default. With `own_process=True` it runs as `branchmerge
serve` in a child process managed the same way: its decoding then holds a GIL and a core of its own instead of
sharing them with the caller's client (the demo's generate stage, 6,000 traces on 2 cores: 135 s in a thread,
101 s in a process of its own; README).
`VllmOptions.command` replaces the program (e.g. a vLLM installed in another virtual environment:
`("/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server")`); the arguments added are vLLM's
`--model`, `--host`, `--port`, `--served-model-name`, then `VllmOptions.args`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from branchmerge.errors import BranchmergeError
from branchmerge.teachers.local import check_model_dir

Engine = Literal["auto", "builtin", "vllm"]
ENGINES: tuple[str, ...] = get_args(Engine)
VLLM_INSTALL = "pip install 'branchmerge[vllm]'"
VLLM_SERVER = ("-m", "vllm.entrypoints.openai.api_server")
LOG_TAIL_LINES = 20
BUILTIN_READY_S = 300.0  # the built-in server in its own process: importing torch and loading the checkpoint
BUILTIN_GRACE_S = 10.0

log = logging.getLogger(__name__)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def check_vllm(what: str) -> None:
    """vLLM importable here and a CUDA device present, or one error naming `what` (the option or field)."""
    if not vllm_installed():
        raise BranchmergeError(
            f"{what} vllm: vLLM is not installed in this Python ({sys.executable}); {VLLM_INSTALL} "
            "(on a CUDA machine), or use engine builtin"
        )
    if not cuda_available():
        raise BranchmergeError(f"{what} vllm: vLLM needs a CUDA GPU and torch sees none; use engine builtin")


def resolve_engine(
    engine: str, what: str = "engine", *, command_given: bool = False
) -> Literal["builtin", "vllm"]:
    """Resolve `engine` to "builtin" or "vllm". With `command_given` (vLLM is run by a command of the caller's), the
    command stands for the installation: only `auto` still asks for a CUDA device."""
    if engine not in ENGINES:
        raise BranchmergeError(f"{what}: '{engine}' is not an engine (known: {', '.join(ENGINES)})")
    if engine == "builtin":
        return "builtin"
    if engine == "auto":
        return "vllm" if (command_given or vllm_installed()) and cuda_available() else "builtin"
    if not command_given:
        check_vllm(what)
    return "vllm"


@dataclass(frozen=True)
class VllmOptions:
    command: tuple[str, ...] | None = None  # default: this Python, `-m vllm.entrypoints.openai.api_server`
    args: tuple[str, ...] = ()  # more server arguments, e.g. ("--max-model-len", "8192")
    ready_timeout_s: float = 1200.0  # a 32B checkpoint takes minutes to load and compile
    grace_s: float = 30.0  # SIGTERM, then SIGKILL after this long
    log_path: Path | None = None  # default: branchmerge-vllm-<name>-<port>.log in the temporary directory


@contextlib.contextmanager
def serve_checkpoint(
    model_dir: str | Path,
    *,
    engine: str = "auto",
    model_name: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    vllm: VllmOptions | None = None,
    what: str = "engine",
    own_process: bool = False,
    **builtin_options: Any,
) -> Iterator[str]:
    """Serve `model_dir` while the block runs; yields its OpenAI base URL ("http://127.0.0.1:PORT/v1").

    `builtin_options` go to the built-in server (`serve.create_app`: max_batch, batch_wait_s, max_queue; with
    `own_process`, max_batch only). `what` names the setting in errors (`--engine`, `recipe.yaml: engine`).
    """
    from branchmerge.teachers.serve import bind_socket, running_server

    path = check_model_dir(model_dir)
    opts = vllm or VllmOptions()
    builtin = resolve_engine(engine, what, command_given=opts.command is not None) == "builtin"
    if builtin and not own_process:
        with running_server(path, host, port, model_name=model_name, **builtin_options) as url:
            yield url
        return
    name = model_name or path.name
    sock = bind_socket(host, port)  # a taken port is an error here; port 0 picks a free one
    port = sock.getsockname()[1]
    sock.close()
    root = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    safe = re.sub(r"[^\w.-]+", "_", name)  # a served name may be "Org/Model"
    if builtin:
        unknown = sorted(set(builtin_options) - {"max_batch"})
        if unknown:
            raise TypeError(
                f"serve_checkpoint(own_process=True): {unknown} apply to the in-thread server only"
            )
        serve = [sys.executable, "-m", "branchmerge", "serve", str(path), "--host", host, "--port", str(port)]
        serve += ["--model-name", name, "--parent-pid", str(os.getpid())]
        if "max_batch" in builtin_options:  # else the server's own default
            serve += ["--max-batch", str(int(builtin_options["max_batch"]))]
        log_path = Path(tempfile.gettempdir()) / f"branchmerge-serve-{safe}-{port}.log"
        with managed_server(serve, root, name, log_path, BUILTIN_READY_S, BUILTIN_GRACE_S) as url:
            yield url
        return
    command = [
        *(opts.command or (sys.executable, *VLLM_SERVER)),
        *("--model", str(path), "--host", host, "--port", str(port), "--served-model-name", name),
        *opts.args,
    ]
    log_path = opts.log_path or Path(tempfile.gettempdir()) / f"branchmerge-vllm-{safe}-{port}.log"
    with managed_server(command, root, name, log_path, opts.ready_timeout_s, opts.grace_s) as url:
        yield url


@contextlib.contextmanager
def managed_server(
    command: Sequence[str], root: str, name: str, log_path: Path, ready_timeout_s: float, grace_s: float
) -> Iterator[str]:
    """Run `command` (an OpenAI-compatible server that will listen at `root` and serve `name`) until the block
    ends; yields `root + "/v1"` once it is ready."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        try:
            proc = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            raise BranchmergeError(f"cannot start the server {command[0]!r}: {e.strerror or e}") from None
    log.info("server pid %d for %s, log %s", proc.pid, name, log_path)
    with _sigterm_as_exit():
        try:
            wait_ready(proc, root, name, log_path, ready_timeout_s)
            yield root + "/v1"
        finally:
            stop_group(proc, grace_s)


def wait_ready(proc: subprocess.Popen[bytes], root: str, name: str, log_path: Path, timeout_s: float) -> None:
    """Poll `/health`, then `/v1/models`, until the server serves `name`; BranchmergeError with the log's tail
    when the process exits first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    pause = 0.05
    while True:
        code = proc.poll()
        if code is not None:
            raise BranchmergeError(
                f"the server exited with code {code} before it was ready (log: {log_path}); its last lines:\n"
                + log_tail(log_path)
            )
        if _get(root + "/health") is not None and name in _model_ids(_get(root + "/v1/models")):
            return
        if time.monotonic() > deadline:
            raise BranchmergeError(
                f"the server was not ready after {timeout_s:g} s (log: {log_path}); its last lines:\n"
                + log_tail(log_path)
            )
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


def _get(url: str) -> str | None:
    """The body of a 200 answer, or None (refused, not yet listening, an error status)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (a URL we built: http://host:port)
            return r.read().decode("utf-8", "replace") if r.status == 200 else None
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _model_ids(body: str | None) -> set[str]:
    try:
        return {str(m.get("id")) for m in json.loads(body or "")["data"]}
    except (ValueError, KeyError, TypeError, AttributeError):
        return set()


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "  (no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"  {line}" for line in tail) if tail else "  (the log is empty)"


def stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the process group, SIGKILL to whatever is left after `grace_s`; the leader is reaped."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group's id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait()
    # Workers the leader left behind (they got the same SIGTERM): give them a moment, then kill the rest.
    deadline = time.monotonic() + min(grace_s, 5.0)
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """While the block runs, SIGTERM to this process raises SystemExit(143) so the `finally` that stops the
    server runs (the default action would end Python at once and orphan the server). Only from the main
    thread, and only over the default handler: a handler the application installed is left alone."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    ):
        yield
        return

    def exit_on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
