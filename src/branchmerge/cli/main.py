"""The `branchmerge` command line: each command parses options and calls one library function."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from branchmerge.errors import BranchmergeError

app = typer.Typer(
    name="branchmerge",
    help="Distil teacher LLMs into small reasoning models: traces → verify → SFT experts → merge → evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def clean_errors(fn: F) -> F:
    """Bad input ends in one red line naming the file, field or port, and exit code 2 — no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except BranchmergeError as e:
            for line in str(e).splitlines():
                # escaped: messages quote paths and commands with brackets, e.g. pip install 'branchmerge[vllm]'
                err_console.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]: finished stages are kept; rerun to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _quiet_libraries() -> None:
    """Our own rich bars report progress; the libraries' tqdm bars and advisories would interleave with them."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()


def command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        return app.command(*args, **kwargs)(clean_errors(fn))  # type: ignore[return-value]

    return deco


from branchmerge.cli import analyze as _analyze  # noqa: E402,F401
from branchmerge.cli import collect as _collect  # noqa: E402,F401
from branchmerge.cli import evaluate as _evaluate  # noqa: E402,F401
from branchmerge.cli import generate as _generate  # noqa: E402,F401
from branchmerge.cli import pipeline as _pipeline  # noqa: E402,F401
from branchmerge.cli import process as _process  # noqa: E402,F401
from branchmerge.cli import recipes as _recipes  # noqa: E402,F401  (registers commands)
from branchmerge.cli import search as _search  # noqa: E402,F401
from branchmerge.cli import train as _train  # noqa: E402,F401


def main() -> None:  # pragma: no cover
    app(prog_name="branchmerge")
    sys.exit(0)


__all__ = ["Annotated", "Path", "app", "command", "console", "main"]
