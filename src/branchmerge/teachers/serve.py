"""An OpenAI-compatible chat server over a local checkpoint, with dynamic batching.

Why: every stage that talks to a teacher or judge speaks the OpenAI chat API, so the embedded tiny teacher is
served the same way as a vLLM or hosted endpoint, and the client code path is the one users run at scale.

Concurrent requests are batched by `teachers/batching.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from branchmerge.errors import BranchmergeError
from branchmerge.teachers.batching import Batcher, CompletionModel, QueueFullError, Row
from branchmerge.teachers.local import Completion, LocalModel, SamplingParams, check_model_dir

MAX_N = 128  # OpenAI's own limit on `n`
DEFAULT_MAX_TOKENS = 256  # only when the model's context length is unknown


# --------------------------------------------------------------------------------------------- API schema


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str = ""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[_TextPart] | None = None

    def as_dict(self) -> dict[str, str]:
        if isinstance(self.content, list):  # OpenAI content parts; a text model can read only text
            kinds = sorted({p.type for p in self.content} - {"text"})
            if kinds:
                raise ApiError(
                    400, f"'messages': only text content parts are supported (got {kinds})", "messages"
                )
            return {"role": self.role, "content": "".join(p.text for p in self.content)}
        return {"role": self.role, "content": self.content or ""}


class ChatRequest(BaseModel):
    """The OpenAI chat-completions fields we honour. Unknown fields are ignored, as OpenAI servers do,
    except the few in `_UNSUPPORTED` that would change the output and are refused rather than dropped."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @field_validator("n", "temperature", "top_p", "stream", mode="before")
    @classmethod
    def _null_means_default(cls, v: Any, info: ValidationInfo) -> Any:
        # Some SDKs send explicit nulls for fields the caller left out.
        return cls.model_fields[info.field_name or ""].default if v is None else v


_UNSUPPORTED = ("stop", "logprobs", "top_logprobs", "tools", "response_format", "logit_bias")


def _error_response(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    if err.get("type") == "json_invalid":
        return f"request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})", None
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return (f"'{param}': {err['msg']}" if param else err["msg"]), param


# --------------------------------------------------------------------------------------------- the app


def build_app(
    model: CompletionModel,
    *,
    model_name: str | None = None,
    context_length: int | None = None,
    max_batch: int = 32,
    batch_wait_s: float = 0.01,
    max_queue: int = 256,
) -> FastAPI:
    """The FastAPI app over any `CompletionModel`; `create_app` is the usual entry point."""
    name = model_name or model.name
    batcher = Batcher(model.complete, max_batch=max_batch, batch_wait_s=batch_wait_s, max_queue=max_queue)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await asyncio.to_thread(batcher.stop)

    app = FastAPI(title=f"branchmerge serve: {name}", lifespan=lifespan)
    app.state.stats = batcher.stats
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error_response(400, message, "invalid_request_error", param)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.message, exc.kind, exc.param)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        s = batcher.stats
        return {
            "status": "ok",
            "model": name,
            "queued_rows": batcher.queued_rows,
            "batches": s.batches,
            "rows": s.rows,
            "requests": s.requests,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "branchmerge"}],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(req: ChatRequest) -> dict[str, Any] | StreamingResponse:
        rows, prompt_tokens = _rows_for(req, model, name, context_length)
        if len(rows) > batcher.max_queue:
            raise ApiError(400, f"n={len(rows)} exceeds this server's queue of {batcher.max_queue} rows", "n")
        try:
            future = batcher.submit(rows)
        except QueueFullError as e:
            raise ApiError(503, f"server busy: {e}; retry later", kind="server_overloaded") from None
        try:
            outs = await asyncio.wrap_future(future)
        except Exception as e:
            raise ApiError(500, f"generation failed: {type(e).__name__}: {e}") from None
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(name, outs, prompt_tokens, usage), media_type="text/event-stream")
        return _response(name, outs, prompt_tokens)

    return app


def _rows_for(
    req: ChatRequest, model: CompletionModel, name: str, context_length: int | None
) -> tuple[list[Row], int]:
    """Validate what pydantic cannot, and expand a request into its `n` rows (choice j gets seed + j)."""
    for field in _UNSUPPORTED:
        if (req.model_extra or {}).get(field):
            raise ApiError(400, f"'{field}' is not supported by this server; remove it", field)
    if req.model is not None and req.model != name:
        raise ApiError(
            404,
            f"model '{req.model}' is not served here (this server serves '{name}')",
            "model",
            kind="not_found_error",
        )
    messages = [m.as_dict() for m in req.messages]
    try:
        prompt_tokens = len(model.prompt_ids(messages))
    except Exception as e:  # a chat template that rejects these messages (e.g. an unknown role)
        raise ApiError(400, f"messages do not fit the chat template: {e}", "messages") from None
    max_tokens = req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS
    if context_length is not None:
        room = context_length - prompt_tokens
        if room < 1:
            raise ApiError(
                400,
                f"the prompt has {prompt_tokens} tokens, but the model's context is "
                f"{context_length} tokens; shorten the messages",
                "messages",
            )
        # Generation stops at the end of the context (finish_reason "length", so the truncation is on record)
        # rather than refusing: a teacher with a small context, like the embedded one, then works with the
        # max_tokens defaults sized for big teachers. No max_tokens at all means "up to the end", as OpenAI does.
        max_tokens = min(max_tokens, room)
    rows = [
        (
            messages,
            SamplingParams(
                req.temperature, req.top_p, max_tokens, None if req.seed is None else req.seed + j
            ),
        )
        for j in range(req.n)
    ]
    return rows, prompt_tokens


def _response(name: str, outs: list[Completion], prompt_tokens: int) -> dict[str, Any]:
    """OpenAI's chat.completion shape. Each choice also carries its own `completion_tokens` (an extension:
    OpenAI only reports the sum in `usage`), so clients can record exact per-sample lengths."""
    choices = [
        {
            "index": j,
            "message": {"role": "assistant", "content": c.content, "reasoning_content": c.reasoning},
            "finish_reason": c.finish_reason,
            "completion_tokens": c.completion_tokens,
        }
        for j, c in enumerate(outs)
    ]
    completion_tokens = sum(c.completion_tokens for c in outs)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,  # counted once per request, as OpenAI does
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _sse(name: str, outs: list[Completion], prompt_tokens: int, include_usage: bool) -> Iterator[str]:
    """The answer as OpenAI's `chat.completion.chunk` server-sent events, ending with `data: [DONE]`.

    Generation is batched (`batching.py`), so each choice is complete before its events are sent: a client
    gets the role, then the reasoning and the content as one delta each, then the finish reason. That is the
    protocol streaming clients (the OpenAI SDK's `stream=True`) expect, not token-by-token pacing.
    """
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name}
        return f"data: {json.dumps({**chunk, 'choices': choices, **extra})}\n\n"

    for j, c in enumerate(outs):
        yield event([{"index": j, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        if c.reasoning:
            yield event([{"index": j, "delta": {"reasoning_content": c.reasoning}, "finish_reason": None}])
        yield event([{"index": j, "delta": {"content": c.content}, "finish_reason": None}])
        yield event([{"index": j, "delta": {}, "finish_reason": c.finish_reason}])
    if include_usage:
        completion_tokens = sum(c.completion_tokens for c in outs)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        yield event([], usage=usage)
    yield "data: [DONE]\n\n"


def create_app(
    model_dir: str | Path,
    *,
    model_name: str | None = None,
    max_batch: int = 32,
    batch_wait_s: float = 0.01,
    max_queue: int = 256,
) -> FastAPI:
    """Load the checkpoint in `model_dir` (BranchmergeError if it is not one) and build its server app."""
    check_model_dir(model_dir)
    model = LocalModel(model_dir)
    context = getattr(model.model.config, "max_position_embeddings", None)
    return build_app(
        model,
        model_name=model_name,
        context_length=context,
        max_batch=max_batch,
        batch_wait_s=batch_wait_s,
        max_queue=max_queue,
    )


# --------------------------------------------------------------------------------------------- running it


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen before loading anything, so a taken port fails fast and no other process can take it
    between the check and uvicorn's start (the socket itself is handed to uvicorn)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # allows TIME_WAIT reuse, not a live listener
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise BranchmergeError(
                f"port {port} on {host} is already in use (another server?); pick another port, or 0 for a free one"
            ) from None
        raise BranchmergeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def _serving(app: FastAPI, sock: socket.socket) -> Iterator[str]:
    """Run uvicorn on an already bound socket in a background thread; yield the root URL."""
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="branchmerge-uvicorn", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            sock.close()
            raise BranchmergeError(f"server on {host}:{port} failed to start (see the log above)")
        time.sleep(0.01)
    try:
        yield _url(host, port)
    finally:
        server.should_exit = True  # uvicorn then finishes in-flight requests and closes the socket
        thread.join(timeout=30)


@contextlib.contextmanager
def running_app(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve any ASGI app from a background thread; yields its root URL ("http://127.0.0.1:PORT").

    Port 0 picks a free port. On exit the server finishes in-flight requests (up to 10 s) and stops.
    Tests use it to stand up fake OpenAI-compatible endpoints.
    """
    with _serving(app, bind_socket(host, port)) as root:
        yield root


@contextlib.contextmanager
def running_server(
    model_dir: str | Path, host: str = "127.0.0.1", port: int = 0, **app_options: Any
) -> Iterator[str]:
    """Serve `model_dir` from a background thread for in-process use (the demo, tests).

    Yields the OpenAI base URL, e.g. "http://127.0.0.1:PORT/v1". `app_options` go to `create_app`.
    """
    sock = bind_socket(host, port)  # a taken port fails before any time is spent loading the model
    try:
        app = create_app(model_dir, **app_options)
    except BaseException:
        sock.close()
        raise
    with serving_threads(), _serving(app, sock) as root:
        yield root + "/v1"


def watch_parent(pid: int, every_s: float = 1.0) -> threading.Thread:
    """A daemon thread that ends this process once process `pid` has exited (checked every `every_s`)."""

    was_parent = os.getppid() == pid

    def alive() -> bool:
        if was_parent:  # robust to PID reuse: once the parent exits, this process is re-parented
            return os.getppid() == pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else
            pass
        return True

    def watch() -> None:
        while alive():
            time.sleep(every_s)
        logging.getLogger("uvicorn.error").info("parent process %d is gone; stopping", pid)
        os._exit(0)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def serving_threads(n: int = 1) -> Iterator[None]:
    """Run torch with `n` intra-op threads while serving, and restore the setting afterwards.

    The server's event loop, the batching worker and torch's intra-op pool share the cores; with a second intra-op
    thread spinning, a tiny model on 2 cores served 96 traces in 173 s instead of 13.6 s (1 thread). Big models
    on a GPU are unaffected: their work is on the device.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def serve(
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    model_name: str | None = None,
    max_batch: int = 32,
    batch_wait_s: float = 0.01,
    max_queue: int = 256,
    log_level: str = "info",
    parent_pid: int | None = None,
) -> None:
    """Serve `model_dir` until interrupted (blocking). The OpenAI base URL is http://HOST:PORT/v1.

    `parent_pid`: exit when that process is gone (a server started for a caller, `engines.serve_checkpoint`,
    does not outlive it even when the caller is killed with SIGKILL and cannot stop it)."""
    if parent_pid is not None:
        watch_parent(parent_pid)
    sock = bind_socket(host, port)
    try:
        app = create_app(
            model_dir,
            model_name=model_name,
            max_batch=max_batch,
            batch_wait_s=batch_wait_s,
            max_queue=max_queue,
        )
    except BaseException:
        sock.close()
        raise
    real_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=real_port, log_level=log_level))
    # uvicorn does not announce sockets it was handed, so say where it listens.
    logging.getLogger("uvicorn.error").info("serving %s at %s/v1", app.title, _url(host, real_port))
    with serving_threads():
        server.run(sockets=[sock])
