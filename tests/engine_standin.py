"""A stand-in for vLLM's OpenAI server, for driving `teachers/engines.py`'s process lifecycle on a CPU.

It takes the arguments the engine code passes to vLLM (`--model --host --port --served-model-name`) and answers
`/health`, `/v1/models` and `/v1/chat/completions` (reasoning "stand-in", answer: the last user message
reversed). Flags choose a failure: `--crash` (exit 3 before listening), `--never-ready` (`/health` answers 503),
`--ignore-sigterm` (only SIGKILL ends it), `--pidfile F` (write its pid to F), `--child-pidfile F` (start a worker process in the same group, as
vLLM does, and write its pid to F), `--delay S` (load for S seconds first).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--served-model-name", required=True)
    ap.add_argument("--crash", action="store_true")
    ap.add_argument("--never-ready", action="store_true")
    ap.add_argument("--ignore-sigterm", action="store_true")
    ap.add_argument("--pidfile")
    ap.add_argument("--child-pidfile")
    ap.add_argument("--delay", type=float, default=0.0)
    a = ap.parse_args()
    print(f"stand-in: loading {a.model} as {a.served_model_name}", flush=True)
    if a.pidfile:
        with open(a.pidfile, "w") as f:
            f.write(str(os.getpid()))
    if a.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if a.child_pidfile:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(a.child_pidfile, "w") as f:
            f.write(str(child.pid))
    time.sleep(a.delay)
    if a.crash:
        print("RuntimeError: stand-in crash while loading weights", flush=True)
        sys.exit(3)
    name, ready = a.served_model_name, not a.never_ready

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict | None = None) -> None:
            data = json.dumps(body or {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                self._send(200 if ready else 503)
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"message": "not found"}})
                return
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            user = [m["content"] for m in req["messages"] if m["role"] == "user"][-1]
            answer = user[::-1]
            choices = [
                {
                    "index": j,
                    "message": {"role": "assistant", "content": answer, "reasoning_content": "stand-in"},
                    "finish_reason": "stop",
                }
                for j in range(req.get("n") or 1)
            ]
            usage = {"prompt_tokens": len(user), "completion_tokens": len(answer) * len(choices)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            self._send(
                200,
                {"id": "x", "object": "chat.completion", "model": name, "choices": choices, "usage": usage},
            )

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            print(format % args, flush=True)

    server = ThreadingHTTPServer((a.host, a.port), Handler)
    print(f"stand-in: listening on {a.host}:{a.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
