"""Stand-in OpenAI-compatible endpoints for tests of clients (generation, judges, students)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

Answer = Callable[[int, dict[str, Any]], JSONResponse]


def fake_openai(answer: Answer) -> tuple[FastAPI, list[dict[str, Any]]]:
    """A stand-in endpoint: `answer(call_number, body)` decides each response; calls are recorded."""
    app = FastAPI()
    calls: list[dict[str, Any]] = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        calls.append({"body": body, "auth": request.headers.get("authorization"), "t": time.monotonic()})
        return answer(len(calls), body)

    return app, calls


def ok(body: dict[str, Any], message: dict[str, Any], usage: dict[str, int] | None = None) -> JSONResponse:
    choices = [{"index": j, "message": message, "finish_reason": "stop"} for j in range(body["n"])]
    usage = usage or {"prompt_tokens": 5, "completion_tokens": 7 * body["n"]}
    return JSONResponse({"model": "fake-1", "choices": choices, "usage": usage})
