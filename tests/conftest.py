"""Shared fixtures: a tiny tokenizer and tiny random Qwen3 checkpoints, built offline in seconds."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from branchmerge import runtime

# pytest-xdist's workers start with COLUMNS=80 and LINES=24 in their environment (a plain pytest process has
# neither); a rich Console created at import (the CLI's) would keep that width for good, and a test that gives the
# CLI a width of its own would see its output wrapped at 80. Every test runs as in a plain pytest process.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)

runtime.prepare_environment()  # before torch loads libgomp: idle OpenMP threads sleep instead of spinning

import torch  # noqa: E402

from branchmerge.tinylab.modeling import random_model, save_checkpoint, tiny_qwen3_config  # noqa: E402
from branchmerge.tinylab.tokenizer import build_tokenizer  # noqa: E402

# The files that take longest (about half the suite's time together), run first: pyproject's addopts give each
# file to one of two workers in this order, so no worker starts a long file when the other is nearly done.
LONG_FILES = ("test_demo.py", "test_shipped_recipes.py", "test_train_distributed.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    # a stable sort: the other files keep their order
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine their spin-waits make each
    decoding step many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def make_checkpoint(tokenizer, tmp_path_factory) -> Callable[..., Path]:
    """make_checkpoint(seed=0, **config_overrides) -> folder with a random tiny Qwen3 checkpoint."""

    def make(seed: int = 0, **overrides) -> Path:
        out = tmp_path_factory.mktemp(f"ckpt{seed}")
        model = random_model(tiny_qwen3_config(tokenizer, **overrides), seed=seed)
        save_checkpoint(model, tokenizer, out)
        return out

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(make_checkpoint) -> Path:
    return make_checkpoint(seed=0)
