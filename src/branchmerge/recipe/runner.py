"""Run a recipe: validate everything first, then run its stages (recipe/graph.py) in order with the
content-addressed cache, then write the report from the evaluation stages."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from branchmerge.evaluate.report import render_report
from branchmerge.evaluate.stats import accuracy_table
from branchmerge.recipe.cache import StageCache, StageOutcome
from branchmerge.recipe.describe import describe_models
from branchmerge.recipe.graph import build_stages
from branchmerge.recipe.resolve import STUDENT, preflight
from branchmerge.recipe.schema import Recipe
from branchmerge.recipe.stage_api import Env, Stage
from branchmerge.recipe.summaries import EvalSetSummary, EvalSummary, ProcessSummary
from branchmerge.records import EvalSample, Problem, read_jsonl


@dataclass
class RunResult:
    out_dir: Path
    stages: list[StageOutcome] = field(default_factory=list)
    accuracy: dict[str, dict[str, tuple[float, int]]] = field(default_factory=dict)
    report: Path | None = None


class Finished:
    """The finished stages one stage may read: those it names as upstream."""

    def __init__(self, done: dict[str, StageOutcome], stage: Stage) -> None:
        self.done, self.stage = done, stage

    def _get(self, name: str) -> StageOutcome:
        if name not in self.stage.upstream:
            raise KeyError(f"stage {self.stage.name} reads {name}, which is not among its upstream stages")
        return self.done[name]

    def key(self, stage: str) -> str:
        return self._get(stage).key

    def path(self, stage: str) -> Path:
        return self._get(stage).path


def run_recipe(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    base_dir: str | Path = ".",
    show_progress: bool = True,
    console: Console | None = None,
) -> RunResult:
    console = console or Console()
    out, base = Path(out_dir), Path(base_dir)
    paths = preflight(recipe, base)
    cache = StageCache(out)
    result = RunResult(out)
    done: dict[str, StageOutcome] = {}
    with contextlib.ExitStack() as servers:  # judges started by stages stop when the last stage is done
        for stage in build_stages(recipe, Env(base, paths, show_progress, servers)):
            up = Finished(done, stage)
            o = cache.run(stage.name, stage.key(up), partial(stage.run, up), stage.summary)
            done[stage.name] = o
            result.stages.append(o)
            status = "[cyan]reused[/cyan]" if o.reused else "[green]ran[/green]   "
            secs = o.original_seconds if o.reused else o.seconds
            console.print(f"  {status} {escape(o.name):<28} {secs:7.1f} s  {escape(o.summary.describe())}")

    samples = [
        s
        for o in result.stages
        if isinstance(o.summary, EvalSummary)
        for s in read_jsonl(o.path / "samples.jsonl", EvalSample)
    ]
    eval_problems = [
        p
        for o in result.stages
        if isinstance(o.summary, EvalSetSummary)
        for p in read_jsonl(o.path / "problems.jsonl", Problem)
    ]
    result.accuracy = accuracy_table(samples)
    rows = [(o.name, "reused" if o.reused else "ran", o.original_seconds) for o in result.stages]
    e_spec = recipe.eval
    result.report = render_report(
        samples,
        out,
        baseline=e_spec.baseline,
        stage_times=rows,
        notes=_notes(recipe, result.accuracy, result.stages),
        title=f"{recipe.name}: results",
        merges=merge_parents(recipe, {s.model for s in samples}),
        problems=eval_problems,
        max_k=e_spec.max_k,
        models=describe_models(recipe, result.stages),
    )
    return result


def merge_parents(recipe: Recipe, evaluated: set[str]) -> dict[str, list[str]]:
    """For the report's merge-synergy table: each evaluated merge and the evaluated models it combines (does the
    merge beat every one of them?). A TIES/DARE base that is not among `models` is the origin of the task
    vectors, not a parent; an intermediate merge that was not evaluated stands for its own parents, so
    (A & B) & C is compared with A, B and C."""

    def parents(name: str) -> list[str]:
        out: list[str] = []
        for entry in recipe.merges[name].get("models", []) or []:
            m = str(entry["model"] if isinstance(entry, dict) else entry)
            out += parents(m) if m in recipe.merges and m not in evaluated else [m]
        return list(dict.fromkeys(p for p in out if p in evaluated))

    found = {name: parents(name) for name in recipe.merges if name in evaluated}
    return {name: ps for name, ps in found.items() if ps}


def _notes(
    recipe: Recipe, acc: dict[str, dict[str, tuple[float, int]]], outcomes: list[StageOutcome]
) -> list[str]:
    notes = []
    base = acc.get(STUDENT, {})
    for d in recipe.problems.train_domains:
        e = acc.get(f"expert-{d}", {}).get(d)
        b = base.get(d)
        if e and b:
            verdict = "beats" if e[0] > b[0] else "does NOT beat"
            notes.append(
                f"expert-{d} {verdict} the student base on {d}: {100 * e[0]:.1f}% vs {100 * b[0]:.1f}%"
            )
    for o in outcomes:
        if isinstance(o.summary, ProcessSummary):
            s = o.summary
            steps = ", ".join(f"{k} → {v.after}" for k, v in s.steps.items())
            notes.append(f"processing kept {s.kept} of {s.traces} teacher traces ({steps})")
    reused = [o.name for o in outcomes if o.reused]
    if reused:
        notes.append("reused from an earlier run: " + ", ".join(reused))
    return notes


def print_results(result: RunResult, console: Console | None = None) -> None:
    console = console or Console()
    domains = sorted({d for row in result.accuracy.values() for d in row if d != "all"})
    table = Table(title="accuracy (%) on held-out items")
    table.add_column("model")
    for d in [*domains, "all"]:
        table.add_column(d, justify="right")
    for m, row in result.accuracy.items():
        table.add_row(m, *[f"{100 * row[d][0]:.1f}" if d in row else "–" for d in [*domains, "all"]])
    console.print(table)
    ran = sum(o.seconds for o in result.stages)
    reused = [o.name for o in result.stages if o.reused]
    console.print(f"stages run in {ran:.1f} s; reused: {', '.join(reused) if reused else 'none'}")
    console.print(f"report: {result.report}")
