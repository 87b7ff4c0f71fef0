"""`branchmerge merge-search`: a thin wrapper over `branchmerge.merge.search.search_merges`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from branchmerge.cli.main import command, console


@command("merge-search")
def merge_search(
    spec: Annotated[
        Path, typer.Argument(help="Search SPEC YAML: a merge template with ranges, an objective.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for study.db, trials.jsonl, best.yaml (reruns resume).")
    ],
    trials: Annotated[
        int | None,
        typer.Option("--trials", min=1, help="Finished trials wanted in --out (default: the spec's)."),
    ] = None,
) -> None:
    """Search merge parameters (and the order of a sequential merge) with Optuna, one objective per domain.

    Example: branchmerge merge-search search.yaml --out runs/search --trials 20
    """
    import optuna

    from branchmerge.merge.search import search_merges
    from branchmerge.merge.search_report import print_search_result

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our bar and tables report trials and failures
    print_search_result(search_merges(spec, out, trials=trials), console)
