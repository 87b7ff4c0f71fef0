"""Teachers as configured: an OpenAI-compatible model behind one endpoint or a pool, its limits and prices.

A YAML teachers file is a list of these mappings (or `teachers:` holding one); `load_teachers` reads it with
errors that name the file, the entry and the field.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from branchmerge.errors import BranchmergeError

# Body fields the client sets itself; letting `extra_body` override them would break sample keys or records.
_RESERVED = frozenset({"model", "messages", "n", "seed", "stream", "temperature", "top_p", "max_tokens"})


class TeacherConfig(BaseModel):
    """One OpenAI-compatible endpoint and how hard to push it."""

    model_config = ConfigDict(extra="forbid")

    name: str  # the `teacher` field of every Trace; part of the key
    base_url: (
        str | list[str]
    )  # e.g. "http://127.0.0.1:8000/v1", or several servers of the same model (a pool)
    model: str
    api_key_env: str | None = None  # name of the environment variable holding the key, never the key itself
    max_concurrency: int = Field(8, ge=1)  # requests in flight per endpoint
    requests_per_min: float | None = Field(None, gt=0)  # for the whole teacher (providers meter per key)
    tokens_per_min: float | None = Field(None, gt=0)  # prompt + completion tokens
    timeout_s: float = Field(120, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff_s: float = Field(1.0, ge=0)  # first retry waits about this long, doubling each time
    pause_after: int = Field(5, ge=1)  # an endpoint failing this many requests in a row is paused ...
    pause_s: float = Field(30, gt=0)  # ... for this long, then tried again
    price_prompt: float | None = Field(None, ge=0)  # USD per million prompt tokens, for cost estimates
    price_completion: float | None = Field(None, ge=0)  # USD per million completion tokens
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | list[str]) -> str | list[str]:
        urls = [v] if isinstance(v, str) else v
        if not urls:
            raise ValueError("give at least one URL")
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"'{url}' is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
        return v

    @property
    def urls(self) -> list[str]:
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float | None:
        """USD for these tokens at the configured prices; None when no price is given."""
        if self.price_prompt is None and self.price_completion is None:
            return None
        return (
            prompt_tokens * (self.price_prompt or 0) + completion_tokens * (self.price_completion or 0)
        ) / 1e6

    @field_validator("extra_body")
    @classmethod
    def _no_reserved(cls, v: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(_RESERVED & v.keys())
        if clash:
            raise ValueError(f"{clash} are set by generate itself; use its options instead")
        return v

    def headers(self) -> dict[str, str]:
        """Request headers; a named but unset key variable is an error here, before any request is sent."""
        if self.api_key_env is None:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise BranchmergeError(
                f"teacher '{self.name}': environment variable {self.api_key_env} is not set (it should hold the API key)"
            )
        return {"Authorization": f"Bearer {key}"}


def validate_teachers(teachers: TeacherConfig | Sequence[TeacherConfig]) -> list[TeacherConfig]:
    out = [teachers] if isinstance(teachers, TeacherConfig) else list(teachers)
    if not out:
        raise BranchmergeError("give at least one teacher")
    names = [t.name for t in out]
    if len(set(names)) < len(names):
        raise BranchmergeError(f"teacher names must be unique (they are part of every trace's key): {names}")
    return out


def load_teachers(path: str | Path) -> list[TeacherConfig]:
    """Teachers from a YAML file: a list of TeacherConfig mappings (or `teachers:` holding one). Errors name
    the file, the entry and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise BranchmergeError(f"{path}: cannot read teachers ({e})") from None
    if isinstance(data, dict) and "teachers" in data:
        data = data["teachers"]
    if not isinstance(data, list) or not data:
        raise BranchmergeError(f"{path}: expected a list of teachers (name, base_url, model, ...)")
    out = []
    for i, entry in enumerate(data):
        try:
            out.append(TeacherConfig.model_validate(entry))
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(x) for x in first["loc"]) or "entry"
            raise BranchmergeError(f"{path}: teachers[{i}].{field}: {first['msg']}") from None
    return validate_teachers(out)
