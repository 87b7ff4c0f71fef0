"""`branchmerge analyze`: task vectors of experts against their base (a thin wrapper over merge.analyze)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from branchmerge.cli.main import command, console


@command("analyze")
def analyze(
    experts: Annotated[
        list[Path], typer.Argument(help="Expert checkpoint folders fine-tuned from the base.")
    ],
    base: Annotated[Path, typer.Option("--base", help="The checkpoint the experts were fine-tuned from.")],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for analysis.csv, summary.md and heatmap.png.")
    ] = Path("analysis"),
    top_fraction: Annotated[
        float, typer.Option("--top-fraction", help="Top-share: mass held by this fraction of coordinates.")
    ] = 0.01,
    density: Annotated[
        float, typer.Option("--density", help="TIES trim before counting sign conflicts (1 = no trim).")
    ] = 0.2,
) -> None:
    """Task vectors (expert − base) per tensor and layer: norms, cosines, TIES sign conflicts, top-k share.

    Example: branchmerge analyze --base ./student ./expert-math ./expert-code --out analysis/
    """
    from branchmerge.merge.analysis_report import layer_table
    from branchmerge.merge.analyze import analyze_task_vectors

    result = analyze_task_vectors(base, experts, out, top_fraction=top_fraction, density=density)
    headers, rows = layer_table(result, detailed=False)
    table = Table(*headers, title="task vectors per layer")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for path in result.files:
        console.print(f"→ {path}")
