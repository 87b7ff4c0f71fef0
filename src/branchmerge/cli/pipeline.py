"""One command per pipeline stage; each is a thin wrapper over the library function it names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, cast

import typer

from branchmerge.cli.main import command, console
from branchmerge.errors import BranchmergeError
from branchmerge.records import EvalSample, Problem, Trace, read_jsonl, write_jsonl


def _problems(path: Path) -> dict[str, Problem]:
    return {p.id: p for p in read_jsonl(path, Problem)}


@command("serve")
def serve(
    model: Annotated[Path, typer.Argument(help="Local checkpoint folder (config.json + safetensors).")],
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; 127.0.0.1 keeps it local.")
    ] = "127.0.0.1",
    max_batch: Annotated[int, typer.Option("--max-batch", help="Most sequences decoded together.")] = 32,
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="The served model name (default: the folder's name).")
    ] = None,
    parent_pid: Annotated[
        int | None,
        typer.Option("--parent-pid", help="Exit when this process is gone (a server started for it)."),
    ] = None,
) -> None:
    """Serve a local checkpoint with an OpenAI-compatible API (/v1/chat/completions, /v1/models).

    Example: branchmerge serve ./my-model --port 8000
    """
    from branchmerge.teachers.serve import serve as run_server

    run_server(model, host=host, port=port, model_name=model_name, max_batch=max_batch, parent_pid=parent_pid)


@command("build-sft")
def build_sft(
    traces: Annotated[Path, typer.Argument(help="Verified traces JSONL.")],
    problems: Annotated[Path, typer.Option("--problems", help="Problems JSONL.")],
    student: Annotated[
        Path, typer.Option("--student", help="Student checkpoint (its tokenizer counts tokens).")
    ],
    out: Annotated[Path, typer.Option("--out", help="SFT examples JSONL.")],
    max_length: Annotated[int, typer.Option("--max-length", help="Drop longer examples.")] = 4096,
    layout: Annotated[
        str,
        typer.Option("--layout", help="think (<think> in content), field (reasoning_content) or auto."),
    ] = "think",
    dataset: Annotated[
        Path | None, typer.Option("--dataset", help="Also save a `datasets` folder here.")
    ] = None,
) -> None:
    """Turn verified traces into chat SFT examples in the Qwen3 thinking layout, with stats.

    Writes OUT, OUT's stem + .stats.json and + .lengths.png (a length histogram per domain).

    Example: branchmerge build-sft verified.jsonl --problems problems.jsonl --student ./student --out sft.jsonl
    """
    from transformers import AutoTokenizer

    from branchmerge.teachers.local import check_model_dir
    from branchmerge.train import build_sft_examples
    from branchmerge.train.sft_data import Layout, length_histogram, save_as_dataset, sft_stats

    if layout not in ("think", "field", "auto"):
        raise BranchmergeError(f"--layout: '{layout}' is not one of think, field, auto")
    tok = AutoTokenizer.from_pretrained(check_model_dir(student))
    examples, report = build_sft_examples(
        read_jsonl(traces, Trace),
        _problems(problems),
        tok,
        max_length,
        layout=cast(Layout, layout),
    )
    write_jsonl(out, examples)
    stats = sft_stats(examples, report)
    (out.parent / f"{out.stem}.stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    if examples:
        length_histogram(examples, out.parent / f"{out.stem}.lengths.png")
    if dataset is not None:
        save_as_dataset(examples, dataset)
    console.print(f"{report.examples} examples ({report.tokens} tokens), {report.too_long} too long → {out}")
    console.print(
        f"max {stats['max_tokens']} tokens, median {stats['p50_tokens']}, p90 {stats['p90_tokens']}; "
        f"per domain {stats['per_domain']}; per teacher {stats['per_teacher']}"
    )


@command("merge")
def merge(
    config: Annotated[
        Path, typer.Argument(help="mergekit-style YAML (several documents = a sequence of steps).")
    ],
    out: Annotated[
        Path | None, typer.Argument(help="Output checkpoint folder (not needed with --explain).")
    ] = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Resolve the config, print every tensor's parameters, warnings and whether the experts look "
            "mergeable (against base_model, when set); merge nothing.",
        ),
    ] = False,
    device: Annotated[str, typer.Option("--device", help="Where the math runs: cpu or cuda.")] = "cpu",
    intermediate_dir: Annotated[
        Path | None,
        typer.Option("--intermediate-dir", help="Keep a sequence's step outputs here (reused on rerun)."),
    ] = None,
) -> None:
    """Merge checkpoints tensor by tensor from a mergekit YAML (linear, slerp, task_arithmetic, ties, dare_ties,
    dare_linear, model_stock, arcee_fusion, arcee_fusion_mergekit; and, from each model's own calibration
    examples, regmean and fisher).

    Example: branchmerge merge slerp.yaml ./merged   (or: branchmerge merge slerp.yaml --explain)
    """
    from branchmerge.merge import run_merge

    if explain:
        from branchmerge.merge.explain import explain_merge

        print_explanation(explain_merge(config, mergeability=True))
        return
    if out is None:
        raise BranchmergeError("merge: give the output folder (OUT), or --explain to only check the config")
    r = run_merge(config, out, device=device, intermediate_dir=intermediate_dir)
    order = f" in the order {r.order}" if r.order else ""
    console.print(
        f"{r.method}: {r.n_tensors} tensors ({r.n_copied} copied) in {r.seconds:.1f} s{order} → {out}"
    )


def print_explanation(steps: list) -> None:
    """Per step: a table of layers × tensor kinds with their resolved parameters, then the warnings."""
    from itertools import groupby

    from rich.table import Table

    for step in steps:
        table = Table(title=f"{step.name}: {step.method} over {', '.join(step.inputs)}", title_justify="left")
        for col in ("layer", "tensor", "parameters"):
            table.add_column(col)
        for layer, group in groupby(step.rows, key=lambda r: r.layer):
            rows = list(group)
            where = "-" if layer is None else str(layer)
            if layer is not None and len(rows) > 1 and len({r.params for r in rows}) == 1:
                table.add_row(where, f"all {len(rows)} tensors", rows[0].params)
                continue
            for r in rows:
                table.add_row(where, r.kind, r.params)
        console.print(table)
        for w in step.warnings:
            console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
        if not step.warnings:
            console.print("no warnings")
        if step.mergeability is not None:
            m = step.mergeability
            color = {"likely": "green", "risky": "yellow", "unlikely": "red"}[m.verdict]
            console.print(f"mergeability: [{color}]{m.verdict}[/{color}]: {m.reason}", highlight=False)
            console.print(f"  {m.numbers()}", highlight=False)


@command("report")
def report(
    samples: Annotated[list[Path], typer.Argument(help="One or more eval samples JSONL files.")],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder for report.md, report.html and the PNG figures.")
    ],
    baseline: Annotated[str, typer.Option("--baseline", help="Model the others are compared with.")],
    html: Annotated[
        bool, typer.Option("--html/--no-html", help="Also write report.html (self-contained).")
    ] = True,
    merge: Annotated[
        list[str] | None,
        typer.Option(
            "--merge",
            help="MERGED=PARENT1,PARENT2: add a merge-synergy table (domains where MERGED beats every parent). "
            "Repeatable.",
        ),
    ] = None,
    k: Annotated[
        int | None,
        typer.Option("--k", min=1, help="Largest k of the pass@k curves (default: the smallest n)."),
    ] = None,
    problems: Annotated[
        Path | None,
        typer.Option("--problems", help="Problems JSONL: their difficulty groups the output-length tables."),
    ] = None,
    models_file: Annotated[
        Path | None,
        typer.Option(
            "--models",
            help="YAML/JSON list of {name, kind: base|expert|mixture|merge|other, domain, parents, train_tokens, "
            "loss_tokens, wall_s}: adds the Branch-Merge claim section and writes results.json.",
        ),
    ] = None,
) -> None:
    """Write report.md and report.html: pass@1 with bootstrap intervals, paired tests against the baseline,
    merge synergy, pass@k curves and output length, with a grouped bar chart and other figures.

    Example: branchmerge report base.jsonl merged.jsonl --out report/ --baseline student --merge merged=a,b
    """
    from branchmerge.evaluate.claim_models import load_models
    from branchmerge.evaluate.report import render_report

    described = load_models(models_file) if models_file else None
    all_samples = [s for f in samples for s in read_jsonl(f, EvalSample)]
    models = {s.model for s in all_samples}
    if baseline not in models:
        raise BranchmergeError(f"--baseline: '{baseline}' is not a model in the samples")
    merges: dict[str, list[str]] = {}
    for spec in merge or []:
        merged, _, rest = spec.partition("=")
        parents = [p.strip() for p in rest.split(",") if p.strip()]
        if not merged.strip() or not parents:
            raise BranchmergeError(f"--merge: '{spec}' is not MERGED=PARENT1,PARENT2")
        unknown = [m for m in [merged.strip(), *parents] if m not in models]
        if unknown:
            raise BranchmergeError(
                f"--merge {spec}: {', '.join(unknown)} not a model in the samples (known: {', '.join(sorted(models))})"
            )
        merges[merged.strip()] = parents
    path = render_report(
        all_samples,
        out,
        baseline=baseline,
        merges=merges,
        problems=list(_problems(problems).values()) if problems else None,
        max_k=k,
        html=html,
        models=described,
    )
    console.print(f"→ {path}" + (f" and {path.with_name('report.html')}" if html else ""))
    console.print(json.dumps(sorted(models)))
