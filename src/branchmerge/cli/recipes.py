"""`demo` and `run`: a whole recipe, stage by stage, with the cache."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from branchmerge.cli.main import command, console

# `demo --quick`: the same stages with fewer problems and steps (about a minute on 2 cores). It checks the
# plumbing; it trains too little for the experts to beat the student base (the full demo does).
QUICK_OVERRIDES = [
    "problems.train_per_domain=32",
    "problems.eval_per_domain=20",
    "train.settings.max_steps=30",
    "train.settings.batch_size=16",
]


def demo_recipe_path() -> Path:
    return Path(str(resources.files("branchmerge.recipe") / "recipes" / "demo.yaml"))


def _run(recipe_path: Path, out: Path, overrides: list[str], quiet: bool) -> None:
    from branchmerge.recipe import load_recipe, run_recipe
    from branchmerge.recipe.runner import print_results

    recipe = load_recipe(recipe_path, overrides)
    console.print(f"[bold]{recipe.name}[/bold] → {out}")
    result = run_recipe(recipe, out, base_dir=recipe_path.parent, show_progress=not quiet, console=console)
    print_results(result, console)


@command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("branchmerge-demo"),
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer problems and steps (about a minute).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Run the whole loop on the shipped tiny models, end to end on a CPU.

    Serves the tiny teacher on 127.0.0.1, generates traces over HTTP, verifies them, trains one expert per domain
    and a data-mixture baseline, merges the experts (SLERP, TIES, Arcee Fusion), evaluates every model and
    writes report.md with a chart.

    Example: branchmerge demo --quick --out /tmp/bm-demo
    """
    _run(demo_recipe_path(), out, QUICK_OVERRIDES if quick else [], quiet)


@command("run")
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (stage cache lives here).")] = Path(
        "runs"
    ),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a recipe field: KEY=VALUE (repeatable).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check everything that can be checked without running and print the plan: stages (cached or "
            "not), teacher and judge requests, tokens and cost, training tokens and GPU memory per stage. "
            "Fails (exit 2) only on errors; missing inputs and unreachable endpoints are listed.",
        ),
    ] = False,
    no_probe: Annotated[
        bool, typer.Option("--no-probe", help="With --dry-run: do not ask endpoints for /v1/models.")
    ] = False,
) -> None:
    """Run a recipe. Finished stages whose inputs did not change are reused.

    Example: branchmerge run my-recipe.yaml --out runs/exp1 --set train.settings.max_steps=50
    (first: branchmerge run my-recipe.yaml --out runs/exp1 --dry-run)
    """
    if not dry_run:
        _run(recipe, out, set_ or [], quiet)
        return
    from branchmerge.cli.plan_view import print_plan
    from branchmerge.errors import BranchmergeError
    from branchmerge.recipe import load_recipe
    from branchmerge.recipe.plan import plan_recipe

    plan = plan_recipe(load_recipe(recipe, set_ or []), out, recipe.parent, probe=not no_probe)
    print_plan(plan, console)
    if plan.errors:
        raise BranchmergeError(f"{recipe}: {len(plan.errors)} error(s); see above")
