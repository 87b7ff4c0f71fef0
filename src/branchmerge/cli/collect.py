"""`branchmerge collect`: problems from files and datasets into one Problems JSONL (see `branchmerge.collect`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from branchmerge.cli.main import command, console


@command("collect")
def collect(
    spec: Annotated[
        Path, typer.Argument(help="YAML: sources (path, fields, domain, grader), caps, weights, total.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Problems JSONL to write.")],
) -> None:
    """Collect problems: map each source's columns to Problem fields, drop duplicate questions, resample.

    Example: branchmerge collect collect.yaml --out problems.jsonl
    """
    from branchmerge.collect import collect as run_collect
    from branchmerge.collect import load_collect_spec

    report = run_collect(load_collect_spec(spec), out, base_dir=spec.parent)
    table = Table("domain", "read", "duplicates", "target", "kept", title=f"collect: {out}")
    for r in report.rows:
        table.add_row(
            r.domain, str(r.read), str(r.duplicates), "-" if r.target is None else str(r.target), str(r.kept)
        )
    table.add_row(
        "all",
        str(sum(r.read for r in report.rows)),
        str(sum(r.duplicates for r in report.rows)),
        "",
        str(report.kept),
    )
    console.print(table)
