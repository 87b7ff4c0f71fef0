"""The solution's side of the code grader: runs inside the sandbox, in the solution's own process.

Copied into the sandbox as `worker.py` next to `solution.py` and run as `python worker.py < probes.json`: it
loads the solution as a module named "solution", then evaluates each probe in order (a call of one of its
functions with the given arguments, or an expression over its names) and writes one JSON line per probe on its
protocol channel: `{"i": k, "value": <plain data>}` or `{"i": k, "raised": "..."}`; a solution that fails to
load gives one `{"load_error": "..."}` line. The protocol channel is the process's original stdout; the program's
own prints go to stderr.

Nothing here is trusted: the solution can change any of it. It never receives a test or an expected value, only
the probes, so whatever it writes is at most a claim about what its functions return, which the grader checks
against values the solution never saw (code.py). `encode`/`decode` are also the grader's own (strict) reading
of that data. Standard library only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

MAX_DEPTH = 100

_TAGGED = ("tuple", "set", "frozenset", "dict", "bytes", "complex")


def encode(value: Any, depth: int = 0) -> Any:
    """Plain data as JSON: lists, str, int, float, bool, None as themselves; tuples, sets, frozensets, dicts,
    bytes and complex numbers tagged ({"tuple": [...]}). Exact types only: a subclass of int, str, list, ...
    is not plain data (its __eq__ could be anything). TypeError for anything else."""
    if depth > MAX_DEPTH:
        raise TypeError("nested too deeply")
    t = type(value)
    if value is None or t in (bool, int, float, str):
        return value
    if t is list:
        return [encode(x, depth + 1) for x in value]
    if t in (tuple, set, frozenset):
        items = [encode(x, depth + 1) for x in value]
        return {t.__name__: items}
    if t is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if t is bytes:
        return {"bytes": value.hex()}
    if t is complex:
        return {"complex": [value.real, value.imag]}
    raise TypeError(f"a {t.__module__}.{t.__qualname__} is not plain data")


def decode(data: Any, depth: int = 0) -> Any:
    """The inverse of `encode`, strict: ValueError (or TypeError) for anything `encode` cannot produce."""
    if depth > MAX_DEPTH:
        raise ValueError("nested too deeply")
    t = type(data)
    if data is None or t in (bool, int, float, str):
        return data
    if t is list:
        return [decode(x, depth + 1) for x in data]
    if t is not dict or len(data) != 1:
        raise ValueError("not plain data")
    ((tag, body),) = data.items()
    if tag in ("tuple", "set", "frozenset") and type(body) is list:
        items = [decode(x, depth + 1) for x in body]
        return tuple(items) if tag == "tuple" else set(items) if tag == "set" else frozenset(items)
    if tag == "dict" and type(body) is list and all(type(p) is list and len(p) == 2 for p in body):
        return {decode(k, depth + 1): decode(v, depth + 1) for k, v in body}
    if tag == "bytes" and type(body) is str:
        return bytes.fromhex(body)
    if tag == "complex" and type(body) is list and len(body) == 2 and all(type(x) is float for x in body):
        return complex(body[0], body[1])
    raise ValueError(f"not plain data (tag {tag!r})")


def _describe(e: BaseException) -> str:
    try:
        text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    except BaseException:
        text = type(e).__name__
    return text[:300]


def main() -> None:
    channel = os.dup(1)
    os.dup2(2, 1)  # the solution's prints go to stderr, not into the protocol
    sys.stdout = sys.stderr
    probes = json.loads(sys.stdin.read())

    def send(message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(channel, data) :]

    with open("solution.py", encoding="utf-8") as f:
        source = f.read()
    ns: dict[str, Any] = {"__name__": "solution"}
    try:
        exec(compile(source, "solution.py", "exec"), ns)
    except BaseException as e:
        send({"load_error": _describe(e)})
        return
    for i, probe in enumerate(probes):
        try:
            if "callee" in probe:
                name, _, method = probe["callee"].partition("().")
                if not callable(ns.get(name)):
                    raise NameError(f"the solution defines no function {name!r}")
                fn = getattr(ns[name](), method) if method else ns[name]
                args = decode(probe["args"])
                kwargs = {k: decode(v) for k, v in probe["kwargs"]}
                value = fn(*args, **kwargs)
            else:
                scope = dict(ns)
                scope.update({k: decode(v) for k, v in probe["bound"]})
                scope.update({alias: ns[target] for alias, target in probe["aliases"]})
                value = eval(probe["expr"], scope)
            message = {"i": i, "value": encode(value)}
        except BaseException as e:
            message = {"i": i, "raised": _describe(e)}
        try:
            send(message)
        except (TypeError, ValueError) as e:  # e.g. an int too long to write as text
            send({"i": i, "raised": _describe(e)})


def stdin_main() -> None:
    """`python worker.py stdin < config.json`: run the program once per input, each in a fresh process with the
    input on its stdin, and write one JSON line per run: its stdout (up to `max_output` bytes), exit status,
    whether it timed out, and the end of its stderr. Stops after a run that crashed or timed out. The expected
    outputs never come here; the grader compares."""
    cfg = json.loads(sys.stdin.read())
    cap = cfg["max_output"]
    for i, text in enumerate(cfg["inputs"]):
        with open(f"stdin-{i}.out", "w+b") as out, open(f"stdin-{i}.err", "w+b") as err:
            try:
                run = subprocess.run(
                    cfg["argv"], input=text.encode(), stdout=out, stderr=err, timeout=cfg["timeout_s"]
                )
                code, timed_out = run.returncode, False
            except subprocess.TimeoutExpired:
                code, timed_out = -9, True
            out.seek(0)
            data = out.read(cap + 1)
            err.seek(0, 2)
            err.seek(max(0, err.tell() - 300))
            tail = err.read().decode(errors="replace")
        message = {"i": i, "stdout": data[:cap].decode(errors="replace"), "truncated": len(data) > cap}
        print(json.dumps(message | {"returncode": code, "timed_out": timed_out, "stderr": tail}), flush=True)
        if code != 0 or timed_out:
            return


if __name__ == "__main__":
    stdin_main() if sys.argv[1:] == ["stdin"] else main()
