"""The OpenAI-compatible server over a tiny random checkpoint: shape, sampling controls, batching, errors."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from branchmerge.errors import BranchmergeError
from branchmerge.teachers.batching import Batcher, QueueFullError
from branchmerge.teachers.local import Completion, SamplingParams
from branchmerge.teachers.serve import (
    build_app,
    create_app,
    running_app,
    running_server,
    serve,
)
from branchmerge.teachers.thinking import split_reasoning

USER = [{"role": "user", "content": "What is 12 + 30?"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path):
    with running_server(tiny_model_dir) as base_url:
        yield base_url


def chat(base_url: str, **body) -> httpx.Response:
    body.setdefault("messages", USER)
    return httpx.post(f"{base_url}/chat/completions", json=body, timeout=60)


def texts(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [
        c["message"]["content"] + "|" + c["message"]["reasoning_content"] for c in response.json()["choices"]
    ]


def test_models_lists_the_checkpoint_by_folder_name(server: str, tiny_model_dir: Path) -> None:
    data = httpx.get(f"{server}/models").json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == [tiny_model_dir.name]
    assert httpx.get(server.removesuffix("/v1") + "/health").json()["status"] == "ok"


def test_chat_completion_has_openai_shape_and_stops_at_max_tokens(server: str, tiny_model_dir: Path) -> None:
    r = chat(server, model=tiny_model_dir.name, max_tokens=3, temperature=0.7, seed=1)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
    assert data["model"] == tiny_model_dir.name and isinstance(data["created"], int)
    (choice,) = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert set(choice["message"]) == {"role", "content", "reasoning_content"}
    assert choice["message"]["role"] == "assistant"
    usage = data["usage"]
    assert usage["completion_tokens"] == 3 and usage["prompt_tokens"] > 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_seed_reproduces_and_different_seeds_differ(server: str) -> None:
    a = texts(chat(server, temperature=1.0, max_tokens=16, seed=7))
    b = texts(chat(server, temperature=1.0, max_tokens=16, seed=7))
    c = texts(chat(server, temperature=1.0, max_tokens=16, seed=8))
    assert a == b
    assert a != c


def test_temperature_zero_is_greedy_and_deterministic(server: str) -> None:
    a = texts(chat(server, temperature=0, max_tokens=16))
    b = texts(chat(server, temperature=0, max_tokens=16, seed=123))
    assert a == b


def test_nulls_mean_defaults_and_text_parts_are_read(server: str) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is 12 + 30?"}]}]
    r = chat(server, messages=parts, n=None, temperature=None, top_p=None, stream=None, max_tokens=4)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == chat(server, max_tokens=1).json()["usage"]["prompt_tokens"]


def test_n_returns_n_choices_and_choice_j_uses_seed_plus_j(server: str) -> None:
    r = chat(server, n=3, temperature=1.0, max_tokens=12, seed=40)
    got = texts(r)
    assert [c["index"] for c in r.json()["choices"]] == [0, 1, 2]
    assert sum(c["completion_tokens"] for c in r.json()["choices"]) == r.json()["usage"]["completion_tokens"]
    assert len(set(got)) == 3
    assert texts(chat(server, temperature=1.0, max_tokens=12, seed=42)) == [got[2]]


def test_concurrent_requests_share_batches(tiny_model_dir: Path) -> None:
    # A generous wait window so the 8 requests surely meet; the default 10 ms batches them too, under load.
    app = create_app(tiny_model_dir, batch_wait_s=0.2)
    with running_app(app) as root:
        url = f"{root}/v1/chat/completions"
        body = {"messages": USER, "max_tokens": 8, "temperature": 1.0}
        with ThreadPoolExecutor(8) as pool:
            responses = list(
                pool.map(lambda s: httpx.post(url, json={**body, "seed": s}, timeout=60), range(8))
            )
    assert all(r.status_code == 200 for r in responses)
    stats = app.state.stats
    assert stats.requests == 8 and stats.rows == 8
    assert stats.batches < 8
    assert stats.largest_batch > 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": USER, "n": 0}, "n"),
        ({"messages": USER, "temperature": -0.1}, "temperature"),
        ({"messages": USER, "top_p": 0}, "top_p"),
        ({"messages": USER, "top_p": 1.5}, "top_p"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"n": 1}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": USER, "stream": "sometimes"}, "stream"),
        ({"messages": USER, "stop": ["\n"]}, "stop"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages"),
    ],
)
def test_bad_parameters_answer_400_in_openai_error_shape(server: str, body: dict, param: str) -> None:
    r = httpx.post(f"{server}/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param in error["message"]


def test_stream_true_sends_openai_chunks_that_add_up_to_the_plain_answer(server: str) -> None:
    body = {"temperature": 1.0, "max_tokens": 12, "seed": 5, "n": 2}
    plain = chat(server, **body).json()
    events = []
    with httpx.stream(
        "POST",
        f"{server}/chat/completions",
        json={"messages": USER, **body, "stream": True, "stream_options": {"include_usage": True}},
        timeout=60,
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    for j, choice in enumerate(plain["choices"]):
        deltas = [ch["choices"][0] for ch in chunks if ch["choices"] and ch["choices"][0]["index"] == j]
        content = "".join(d["delta"].get("content", "") for d in deltas)
        reasoning = "".join(d["delta"].get("reasoning_content", "") for d in deltas)
        assert (content, reasoning) == (choice["message"]["content"], choice["message"]["reasoning_content"])
        assert (
            deltas[0]["delta"]["role"] == "assistant"
            and deltas[-1]["finish_reason"] == choice["finish_reason"]
        )
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_malformed_json_answers_400(server: str) -> None:
    r = httpx.post(
        f"{server}/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]["message"]


def test_unknown_model_answers_404(server: str, tiny_model_dir: Path) -> None:
    r = chat(server, model="gpt-9")
    assert r.status_code == 404
    assert tiny_model_dir.name in r.json()["error"]["message"]


def test_port_in_use_is_a_clear_error(tiny_model_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = f"port {port} on 127.0.0.1 is already in use"
        with pytest.raises(BranchmergeError, match=message), running_server(tiny_model_dir, port=port):
            pass
        with pytest.raises(BranchmergeError, match=message):
            serve(tiny_model_dir, port=port)


def test_folder_without_weights_is_a_clear_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(BranchmergeError, match=str(tmp_path)):
        create_app(tmp_path)


class FakeModel:
    """Answers every row with a fixed completion; `gate` holds the worker to fill the queue."""

    name = "fake"

    def __init__(self, text: str = "<think>a</think>\n\nb") -> None:
        self.text = text
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.params: list[SamplingParams] = []  # the settings of the last batch

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return [1, 2, 3]

    def complete(self, requests: list[tuple[list[dict[str, str]], SamplingParams]]) -> list[Completion]:
        self.params = [p for _, p in requests]
        self.entered.set()
        self.gate.wait(10)
        reasoning, content, _ = split_reasoning(self.text)
        return [Completion(self.text, reasoning, content, 3, 2, "stop") for _ in requests]


def test_split_reasoning_on_qwen3_layout() -> None:
    assert split_reasoning("<think>a</think>\n\nb") == ("a", "b", True)
    assert split_reasoning("a</think>\n\nb") == ("a", "b", True)  # template put <think> in the prompt
    assert split_reasoning("<think>cut mid-thought") == ("cut mid-thought", "", False)


def test_reasoning_is_served_in_reasoning_content() -> None:
    with running_app(build_app(FakeModel())) as root:
        r = httpx.post(f"{root}/v1/chat/completions", json={"messages": USER}, timeout=30)
    message = r.json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "b", "reasoning_content": "a"}
    assert r.json()["choices"][0]["finish_reason"] == "stop"


def test_full_queue_answers_503() -> None:
    model = FakeModel()
    model.gate.clear()  # the first request occupies the worker; the next fills the queue
    app = build_app(model, max_queue=2, batch_wait_s=0)
    with running_app(app) as root, ThreadPoolExecutor(2) as pool:
        url = f"{root}/v1/chat/completions"
        first = pool.submit(httpx.post, url, json={"messages": USER}, timeout=30)
        assert model.entered.wait(10)
        second = pool.submit(httpx.post, url, json={"messages": USER, "n": 2}, timeout=30)
        while app.state.batcher.queued_rows < 2:
            time.sleep(0.01)
        third = httpx.post(url, json={"messages": USER}, timeout=30)
        too_many = httpx.post(url, json={"messages": USER, "n": 3}, timeout=30)
        model.gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
    assert third.status_code == 503 and "retry later" in third.json()["error"]["message"]
    assert too_many.status_code == 400


def test_batcher_splits_rows_across_batches_and_keeps_order() -> None:
    seen: list[int] = []

    def complete(rows):
        seen.append(len(rows))
        return [Completion(m[0]["content"], "", m[0]["content"], 1, 1, "stop") for m, _ in rows]

    batcher = Batcher(complete, max_batch=2, batch_wait_s=0.05)
    rows = [([{"role": "user", "content": str(i)}], SamplingParams()) for i in range(5)]
    try:
        outs = batcher.submit(rows).result(10)
    finally:
        batcher.stop()
    assert [o.text for o in outs] == ["0", "1", "2", "3", "4"]
    assert seen == [2, 2, 1]
    small = Batcher(complete, max_queue=1)
    try:
        with pytest.raises(QueueFullError):
            small.submit(rows)
    finally:
        small.stop()


def test_max_tokens_stop_at_the_end_of_the_context() -> None:
    model = FakeModel()  # its prompts are 3 tokens long
    with running_app(build_app(model, context_length=10)) as root:
        url = f"{root}/v1/chat/completions"
        assert httpx.post(url, json={"messages": USER, "max_tokens": 100, "n": 2}).status_code == 200
        assert [p.max_tokens for p in model.params] == [7, 7]
        assert httpx.post(url, json={"messages": USER, "max_completion_tokens": 4}).status_code == 200
        assert [p.max_tokens for p in model.params] == [4]
        assert httpx.post(url, json={"messages": USER}).status_code == 200
        assert [p.max_tokens for p in model.params] == [7]
    with running_app(build_app(model, context_length=3)) as root:
        r = httpx.post(f"{root}/v1/chat/completions", json={"messages": USER})
    assert r.status_code == 400 and "context is 3 tokens" in r.json()["error"]["message"]


def test_shutdown_finishes_the_requests_in_flight() -> None:
    model = FakeModel()
    model.gate.clear()  # the request is being decoded when the server is told to stop
    pool = ThreadPoolExecutor(1)
    with running_app(build_app(model)) as root:
        pending = pool.submit(httpx.post, f"{root}/v1/chat/completions", json={"messages": USER}, timeout=30)
        assert model.entered.wait(10)
        threading.Timer(0.5, model.gate.set).start()  # decoding ends after the shutdown began
    response = pending.result()  # leaving the block stopped the server; the request still completed
    pool.shutdown()
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "b"
