"""Endpoints named on the command line: an OpenAI-compatible URL (or several, a pool) with its model name, or a
local checkpoint served on 127.0.0.1 for the duration of a command."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from branchmerge.errors import BranchmergeError, validation_error
from branchmerge.teachers.config import TeacherConfig

# A local checkpoint's server: `auto` is vLLM when it is installed and a CUDA GPU is present, else the built-in one.
EngineOption = Annotated[
    str,
    typer.Option(
        "--engine",
        help="Server for a local checkpoint: auto (vLLM with a CUDA GPU, else builtin), builtin or vllm.",
    ),
]


def endpoint_config(
    option: str, urls: str | list[str], model: str, name: str | None = None, **fields: Any
) -> TeacherConfig:
    """A client config for `urls` (one URL, or a list: a pool of servers of `model`); a bad field is one error
    naming `option`. `fields` are further TeacherConfig fields (api_key_env, max_concurrency, limits...)."""
    base_url = urls if isinstance(urls, str) else urls[0] if len(urls) == 1 else urls
    try:
        return TeacherConfig(name=name or model, base_url=base_url, model=model, **fields)
    except ValidationError as e:
        raise validation_error(option, e) from None


@contextlib.contextmanager
def url_or_checkpoint(
    option: str, where: str | None, model: str | None, api_key_env: str | None, engine: str = "auto"
) -> Iterator[Any]:
    """A TeacherConfig for `where`: an OpenAI-compatible base URL (with `model`), or a local checkpoint folder
    served on 127.0.0.1 by `engine` (auto, builtin, vllm) while the block runs. None when `where` is None."""
    if where is None:
        yield None
        return
    if where.startswith(("http://", "https://")):
        if not model:
            raise BranchmergeError(f"{option} {where}: give the model name with {option}-model")
        yield endpoint_config(option, where, model, api_key_env=api_key_env)
        return
    path = Path(where)
    if not path.is_dir():
        raise BranchmergeError(f"{option} {where}: neither an http(s) URL nor a checkpoint folder")
    from branchmerge.teachers.engines import serve_checkpoint

    name = model or path.name
    with serve_checkpoint(path, engine=engine, model_name=name, what="--engine") as url:
        yield TeacherConfig(name=name, base_url=url, model=name, max_concurrency=32)
