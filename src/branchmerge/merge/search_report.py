"""Rich tables for a finished merge search: the unmerged inputs, the best trial per domain, the Pareto front."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from branchmerge.merge.search import SearchResult, TrialRecord


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return json.dumps(v) if not isinstance(v, str) else v


def _params(row: TrialRecord) -> str:
    return "\n".join(f"{k} = {_value(v)}" for k, v in row.params.items()) or "(no spaces)"


def _scores(result: SearchResult, scores: dict[str, float]) -> list[str]:
    return [f"{scores[d]:.4f}" for d in result.domains] + [f"{sum(scores.values()) / len(scores):.4f}"]


def baseline_table(result: SearchResult) -> Table:
    table = Table(title="Input models, unmerged")
    for col in ["model", *result.domains, "mean"]:
        table.add_column(col, justify="left" if col == "model" else "right")
    for model, scores in result.baselines.items():
        table.add_row(model, *_scores(result, scores))
    return table


def best_by_domain_table(result: SearchResult) -> Table:
    better = "lower" if result.direction == "minimize" else "higher"
    table = Table(title=f"Best trial per domain ({better} is better)")
    for col in ("domain", "trial", "score", "best input", "parameters"):
        table.add_column(col, justify="right" if col in ("trial", "score") else "left")
    pick = min if result.direction == "minimize" else max
    for domain, row in result.best_by_domain.items():
        inputs = {m: s[domain] for m, s in result.baselines.items()}
        best_input = pick(inputs, key=lambda m: inputs[m]) if inputs else None
        table.add_row(
            domain,
            str(row.trial),
            f"{row.scores[domain]:.4f}",
            f"{inputs[best_input]:.4f} ({best_input})" if best_input else "-",
            _params(row),
        )
    return table


def pareto_table(result: SearchResult) -> Table:
    table = Table(title="Pareto front across domains")
    for col in ["trial", *result.domains, "mean", "parameters"]:
        table.add_column(col, justify="left" if col == "parameters" else "right")
    for row in result.pareto:
        table.add_row(str(row.trial), *_scores(result, row.scores), _params(row))
    return table


def print_search_result(result: SearchResult, console: Console) -> None:
    if result.baselines:
        console.print(baseline_table(result))
    if not result.trials:
        console.print(f"no finished trials in {result.out_dir}")
    else:
        console.print(best_by_domain_table(result))
        console.print(pareto_table(result))
    if result.failed:
        first = min(result.failed)
        console.print(f"{len(result.failed)} trials failed; trial {first}: {result.failed[first]}")
    if result.best is not None:
        console.print(
            f"{len(result.trials)} trials; best mean {result.best.mean:.4f} (trial {result.best.trial}) "
            f"→ {result.out_dir / 'best.yaml'}"
        )
