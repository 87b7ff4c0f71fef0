"""`branchmerge generate`: teacher traces over HTTP, one teacher from options or several from a YAML file."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from branchmerge.cli.endpoints import EngineOption, endpoint_config
from branchmerge.cli.main import command, console
from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, read_jsonl


@command("generate")
def generate(
    problems: Annotated[Path, typer.Argument(help="Problems JSONL.")],
    out: Annotated[Path, typer.Option("--out", help="Traces JSONL (appended; reruns skip done keys).")],
    teachers: Annotated[
        Path | None,
        typer.Option("--teachers", help="YAML list of teachers (name, base_url, model, limits, prices...)."),
    ] = None,
    base_url: Annotated[
        list[str] | None,
        typer.Option("--base-url", help="OpenAI-compatible base URL; repeat it for a pool of servers."),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name sent to the endpoint.")] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="A local checkpoint folder as the teacher, served on 127.0.0.1 by a process of its own that "
            "decodes up to --concurrency requests in one batch.",
        ),
    ] = None,
    engine: EngineOption = "auto",
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="Teacher name in the traces (default: model).")
    ] = None,
    api_key_env: Annotated[
        str | None, typer.Option("--api-key-env", help="Environment variable with the API key.")
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Requests in flight per endpoint.")] = 8,
    rpm: Annotated[float | None, typer.Option("--rpm", help="Requests per minute, at most.")] = None,
    tpm: Annotated[float | None, typer.Option("--tpm", help="Tokens per minute, at most.")] = None,
    n: Annotated[int, typer.Option("--n", help="Samples per problem per temperature.")] = 1,
    temperature: Annotated[list[float] | None, typer.Option("--temperature", help="Repeatable.")] = None,
    top_p: Annotated[float, typer.Option("--top-p")] = 0.95,
    max_tokens: Annotated[int, typer.Option("--max-tokens")] = 4096,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", help="Ask again for the keys whose traces are errors.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print requests, token and cost estimates; send nothing.")
    ] = False,
) -> None:
    """Ask teachers for reasoning traces: each problem n times at each temperature, from every teacher.

    Example: branchmerge generate problems.jsonl --out traces.jsonl --base-url http://127.0.0.1:8000/v1 --model teacher --temperature 0.6 --temperature 1.0
    Example: branchmerge generate problems.jsonl --out traces.jsonl --checkpoint ./teacher --engine vllm
    """
    from branchmerge.teachers.client import generate_traces, plan_generation
    from branchmerge.teachers.config import load_teachers
    from branchmerge.teachers.engines import resolve_engine, serve_checkpoint
    from branchmerge.teachers.local import check_model_dir

    if checkpoint is not None:
        if teachers is not None or base_url:
            raise BranchmergeError(
                "name one teacher: --checkpoint DIR, --base-url URL --model NAME or --teachers FILE"
            )
        check_model_dir(checkpoint)
        resolve_engine(engine, "--engine")  # a bad or missing engine fails before anything runs
        served_name = model or checkpoint.name
        # The URL's port is picked when the server starts; everything else is known now (for --dry-run too).
        configs = [
            endpoint_config(
                "--checkpoint",
                "http://127.0.0.1/v1",
                served_name,
                teacher,
                max_concurrency=concurrency,
                requests_per_min=rpm,
                tokens_per_min=tpm,
            )
        ]
    elif teachers is not None:
        if base_url or model:
            raise BranchmergeError("give either --teachers FILE or --base-url/--model, not both")
        configs = load_teachers(teachers)
    elif base_url and model:
        configs = [
            endpoint_config(
                "--base-url",
                base_url,
                model,
                teacher,
                api_key_env=api_key_env,
                max_concurrency=concurrency,
                requests_per_min=rpm,
                tokens_per_min=tpm,
            )
        ]
    else:
        raise BranchmergeError(
            "name the teacher: --base-url URL --model NAME, --checkpoint DIR or --teachers FILE"
        )
    items = read_jsonl(problems, Problem)
    temperatures = tuple(temperature or [0.6])
    if dry_run:
        plans = plan_generation(
            items,
            configs,
            out,
            n=n,
            temperatures=temperatures,
            max_tokens=max_tokens,
            seed=seed,
            retry_errors=retry_errors,
        )
        table = Table(
            "teacher",
            "requests",
            "traces",
            "done already",
            "prompt tok (est.)",
            "completion tok (max)",
            "cost USD (max)",
            title=f"generate --dry-run: {len(items)} problems",
        )
        for name, p in plans.items():
            cost = "-" if p.cost_usd_max is None else f"{p.cost_usd_max:,.2f}"
            table.add_row(
                name,
                f"{p.requests:,}",
                f"{p.samples:,}",
                f"{p.skipped:,}",
                f"{p.prompt_tokens:,}",
                f"{p.completion_tokens_max:,}",
                cost,
            )
        console.print(table)
        return
    with contextlib.ExitStack() as stack:
        if checkpoint is not None:
            url = stack.enter_context(
                serve_checkpoint(
                    checkpoint,
                    engine=engine,
                    model_name=configs[0].model,
                    what="--engine",
                    own_process=True,  # the server's decoding on a core of its own, beside this client
                    max_batch=configs[0].max_concurrency,
                )
            )
            configs = [configs[0].model_copy(update={"base_url": url})]
        s = generate_traces(
            items,
            configs,
            out,
            n=n,
            temperatures=temperatures,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            retry_errors=retry_errors,
        )
    table = Table(
        "teacher",
        "requests",
        "traces",
        "errors",
        "truncated",
        "retries",
        "mean latency s",
        "prompt tok",
        "completion tok",
        "cost USD",
        title=f"generate: {out} in {s.wall_s:.1f} s",
    )
    for name, t in s.teachers.items():
        cost = "-" if t.cost_usd is None else f"{t.cost_usd:,.4f}"
        table.add_row(
            name,
            f"{t.requests:,}",
            f"{t.traces:,}",
            f"{t.errors:,}",
            f"{t.truncated:,}",
            f"{t.retries:,}",
            f"{t.mean_latency_s:.2f}",
            f"{t.prompt_tokens:,}",
            f"{t.completion_tokens:,}",
            cost,
        )
    console.print(table)
    if s.retried_errors:
        console.print(f"--retry-errors: {s.retried_errors} error traces were asked again")
