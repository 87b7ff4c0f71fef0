"""How `run --dry-run` prints a plan."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from branchmerge.recipe.plan import Plan


def _n(x: int | None) -> str:
    return "?" if x is None else f"{x:,}"


def _usd(x: float | None) -> str:
    return "–" if x is None else f"${x:,.2f}"


def print_plan(plan: Plan, console: Console) -> None:
    console.print(f"[bold]plan for {escape(plan.recipe)}[/bold]")
    for title, lines, style in (
        ("errors (the run would fail)", plan.errors, "red"),
        ("before running", plan.todo, "yellow"),
        ("warnings", plan.warnings, "yellow"),
    ):
        if lines:
            console.print(f"[{style}]{title}:[/{style}]")
            for line in lines:
                console.print(f"  - {escape(line)}")
    if plan.endpoints:
        t = Table(title="endpoints")
        for c in ("teacher", "url", "status"):
            t.add_column(c)
        for row in plan.endpoints:
            t.add_row(*map(escape, row))
        console.print(t)
    if plan.problems:
        per = ", ".join(f"{d} {n}" for d, n in plan.problems.items())
        console.print(f"training problems: {sum(plan.problems.values()):,} ({escape(per)})")
    if plan.eval_items:
        console.print("eval items: " + escape(", ".join(f"{k} {v}" for k, v in plan.eval_items.items())))
    t = Table(title="stages, in order")
    t.add_column("stage")
    t.add_column("cached")
    t.add_column("note")
    for s in plan.stages:
        t.add_row(escape(s.name), {True: "yes", False: "no", None: "–"}[s.cached], escape(s.note))
    console.print(t)
    t = Table(title=f"teacher and judge requests (prompt tokens by {plan.tokens_by})")
    for c in (
        "teacher",
        "role",
        "requests",
        "prompt tok",
        "completion tok ≤",
        "expected",
        "cost ≤",
        "expected $",
    ):
        t.add_column(c, justify="right" if c not in ("teacher", "role") else "left")
    for x in plan.teachers:
        t.add_row(
            escape(x.who),
            escape(x.role),
            _n(x.requests),
            _n(x.prompt_tokens),
            _n(x.completion_tokens),
            _n(x.expected_completion),
            _usd(x.cost),
            _usd(x.expected_cost),
        )
    console.print(t)
    t = Table(title="training (GPU memory per device, ±25%)")
    for c in ("stage", "method", "steps", "batch", "seq", "examples", "tokens", "GPU GiB"):
        t.add_column(c, justify="right" if c in ("steps", "batch", "seq", "tokens", "GPU GiB") else "left")
    for r in plan.training:
        mem = "?" if r.memory_gib is None else f"{r.memory_gib:.1f}"
        t.add_row(
            escape(r.name), r.method, str(r.steps), str(r.batch_size), str(r.seq_len),
            escape(r.examples), _n(r.tokens), mem,
        )  # fmt: skip
    console.print(t)
    notes: dict[str, list[str]] = {}
    for r in plan.training:
        notes.setdefault(r.memory_note, []).append(r.name)
    for note, names in notes.items():
        console.print(f"  memory of {escape(', '.join(names))}: {escape(note)}")
