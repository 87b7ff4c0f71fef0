"""The one exception type the CLI turns into clear lines and exit code 2, and pydantic error formatting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError


class BranchmergeError(Exception):
    """Bad input a person can act on: the message names the file, field or port and what to do."""


def field_path(loc: tuple[int | str, ...]) -> str:
    """("models", 0, "model") -> "models[0].model"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def describe(err: Any) -> str:
    """pydantic's message without its prefixes: "unknown key", or the validator's own words."""
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "value_error":
        return str(err["ctx"]["error"])
    return str(err["msg"])


def validation_error(
    source: str, e: ValidationError, message: Callable[[Any], str] = describe
) -> BranchmergeError:
    """One line per problem, each naming the source and the field."""
    return BranchmergeError(
        "\n".join(f"{source}: {field_path(tuple(err['loc']))}: {message(err)}" for err in e.errors())
    )
