"""`branchmerge eval`: a local checkpoint or an OpenAI-compatible endpoint on problems, graded, with a table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from branchmerge.cli.endpoints import EngineOption, endpoint_config
from branchmerge.cli.main import command, console
from branchmerge.errors import BranchmergeError
from branchmerge.records import EvalSample, Problem, read_jsonl
from branchmerge.teachers.config import TeacherConfig


@command("eval")
def evaluate(
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Samples JSONL (appended; reruns resume); completions go to OUT.outputs.jsonl."
        ),
    ],
    model: Annotated[
        Path | None,
        typer.Argument(
            help="Local checkpoint folder; leave out to evaluate an endpoint (--base-url, --model)."
        ),
    ] = None,
    base_url: Annotated[
        list[str] | None,
        typer.Option("--base-url", help="OpenAI-compatible base URL; repeat it for a pool of servers."),
    ] = None,
    endpoint_model: Annotated[
        str | None, typer.Option("--model", help="Model name sent to the endpoint.")
    ] = None,
    api_key_env: Annotated[
        str | None, typer.Option("--api-key-env", help="Environment variable with the endpoint's API key.")
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Requests in flight per endpoint.")
    ] = 8,
    name: Annotated[
        str | None, typer.Option("--name", help="Model name in the results (default: folder or --model).")
    ] = None,
    problems: Annotated[Path | None, typer.Option("--problems", help="Problems JSONL.")] = None,
    benchmark: Annotated[
        str | None, typer.Option("--benchmark", help="Built-in benchmark: mdr (10 domains x 10 levels).")
    ] = None,
    domains: Annotated[str | None, typer.Option("--domains", help="mdr domains, e.g. logic,sql.")] = None,
    levels: Annotated[str | None, typer.Option("--levels", help="mdr levels, e.g. 1-3,7.")] = None,
    fresh_seed: Annotated[
        int | None, typer.Option("--fresh-seed", help="mdr: newly generated items from this seed.")
    ] = None,
    set_name: Annotated[
        str | None,
        typer.Option("--set", help="Standard set: math500, aime, gpqa-diamond, gsm8k, humaneval..."),
    ] = None,
    set_path: Annotated[
        Path | None, typer.Option("--set-path", help="The standard set's local file or folder.")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N items.")] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Samples per item.")] = 1,
    temperature: Annotated[
        float, typer.Option("--temperature", min=0.0, help="Sampling temperature (reasoning evals use 0.6).")
    ] = 0.6,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass, in (0, 1].")] = 0.95,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=1, help="Completion limit, reasoning included.")
    ] = 4096,
    seed: Annotated[
        int, typer.Option("--seed", help="Sampling seed (each request's is derived from it); GPQA's shuffle.")
    ] = 0,
    judge_url: Annotated[
        str | None, typer.Option("--judge", help="OpenAI-compatible base URL of the judge for judged items.")
    ] = None,
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="The judge's model name.")] = None,
    judge_key_env: Annotated[
        str | None, typer.Option("--judge-api-key-env", help="Environment variable with the judge's API key.")
    ] = None,
    regrade: Annotated[
        bool,
        typer.Option(
            "--regrade", help="Grade the kept completions again (after a grader fix); ask nothing twice."
        ),
    ] = False,
    serve: Annotated[
        bool,
        typer.Option("--serve", help="Serve the local checkpoint over HTTP instead of decoding in-process."),
    ] = False,
    engine: EngineOption = "auto",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Local checkpoint: sequences decoded together.")
    ] = 256,
) -> None:
    """Evaluate a model, n samples per item at the given sampling settings, graded by the items' graders; print
    pass@1 per domain and the truncation rate. A rerun resumes where the last one stopped; delete OUT to start
    over.

    Example: branchmerge eval ./merged --benchmark mdr --domains logic,math --n 4 --out merged.jsonl
    Example: branchmerge eval --base-url http://127.0.0.1:8000/v1 --model qwen3-4b --set gsm8k --set-path gsm8k/test.jsonl
    """
    from branchmerge.evaluate.grading import truncation_rate
    from branchmerge.evaluate.runner import evaluate_model

    if (model is None) == (base_url is None):
        raise BranchmergeError("name one model: a checkpoint folder, or --base-url URL --model NAME")
    if base_url and not endpoint_model:
        raise BranchmergeError("--base-url needs --model (the model name the endpoint serves)")
    if (judge_url is None) != (judge_model is None):
        raise BranchmergeError("give the judge as --judge URL --judge-model NAME (both)")
    target: TeacherConfig | Path
    if model is not None:
        target = model
    else:
        assert base_url is not None and endpoint_model is not None  # checked above
        target = endpoint_config(
            "--base-url", base_url, endpoint_model, name, api_key_env=api_key_env, max_concurrency=concurrency
        )
    items, bench = load_problems(
        problems, benchmark, domains, levels, fresh_seed, set_name, set_path, seed, limit
    )
    if not items:
        raise BranchmergeError("no items to evaluate (check --domains, --levels, --limit or the file)")
    judge = (
        endpoint_config("--judge", judge_url, judge_model, "judge", api_key_env=judge_key_env)
        if judge_url and judge_model
        else None
    )
    samples = evaluate_model(
        target,
        items,
        out,
        model_name=name,
        benchmark=bench,
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        seed=seed,
        batch_size=batch_size,
        serve=serve,
        engine=engine,
        judge=judge,
        regrade=regrade,
    )
    print_summary(samples)
    cut = round(truncation_rate(samples) * len(samples))
    console.print(
        f"truncation rate {100 * truncation_rate(samples):.1f}% ({cut} of {len(samples)} samples cut off before "
        f"an answer; raise --max-tokens if high) → {out}"
    )


def load_problems(
    problems: Path | None,
    benchmark: str | None,
    domains: str | None,
    levels: str | None,
    fresh_seed: int | None,
    set_name: str | None,
    set_path: Path | None,
    seed: int,
    limit: int | None = None,
) -> tuple[list[Problem], str]:
    """The items (the first `limit`) and the benchmark name recorded with every sample, from exactly one of the
    three sources. `seed` only shuffles the choices of sets that have them (GPQA)."""
    given = [
        flag for flag, v in (("--problems", problems), ("--benchmark", benchmark), ("--set", set_name)) if v
    ]
    if len(given) != 1:
        raise BranchmergeError(
            f"give exactly one source of items: --problems FILE, --benchmark mdr or --set NAME --set-path PATH"
            f"{' (got ' + ', '.join(given) + ')' if given else ''}"
        )
    mdr_only = [
        f
        for f, v in (("--domains", domains), ("--levels", levels), ("--fresh-seed", fresh_seed))
        if v is not None
    ]
    if mdr_only and benchmark is None:
        raise BranchmergeError(f"{', '.join(mdr_only)}: only with --benchmark mdr")
    if set_path is not None and set_name is None:
        raise BranchmergeError("--set-path: only with --set NAME")
    if problems is not None:
        if not problems.is_file():
            raise BranchmergeError(f"--problems: {problems} not found")
        return read_jsonl(problems, Problem)[:limit], problems.stem
    if benchmark is not None:
        if benchmark != "mdr":
            raise BranchmergeError(f"--benchmark: '{benchmark}' is not a built-in benchmark (known: mdr)")
        from branchmerge.evaluate.mdr import load_mdr

        names = [d.strip() for d in domains.split(",") if d.strip()] if domains else None
        return load_mdr(names, fresh_seed, parse_levels(levels) if levels else None)[:limit], "mdr"
    if set_path is None:
        raise BranchmergeError(f"--set {set_name}: give its local file or folder with --set-path PATH")
    from branchmerge.evaluate.loaders import load_set

    assert set_name is not None
    return load_set(set_name, set_path, seed=seed, limit=limit), set_name


def parse_levels(text: str) -> list[int]:
    """Levels from text: "1-3,7" -> [1, 2, 3, 7]; mdr levels run from 1 to 10."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise BranchmergeError(f"--levels: '{part}' is not a level or a range like 1-3") from None
        if not 1 <= first <= last <= 10:
            raise BranchmergeError(f"--levels: '{part}' is outside 1-10 (or its range runs backwards)")
        out += [lv for lv in range(first, last + 1) if lv not in out]
    return out


def print_summary(samples: list[EvalSample]) -> None:
    """Per domain (then all): items, samples, pass@1 (the mean over samples), truncated share, mean tokens."""
    from branchmerge.evaluate.grading import truncation_rate

    groups: dict[str, list[EvalSample]] = {}
    for s in samples:
        groups.setdefault(s.domain, []).append(s)
    rows = [*sorted(groups.items()), ("all", samples)]
    table = Table(title=f"{samples[0].model} on {samples[0].benchmark}" if samples else "no samples")
    for col in ("domain", "items", "samples", "pass@1", "truncated", "output tok", "reasoning tok"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    for domain, ss in rows:
        k = max(len(ss), 1)
        table.add_row(
            domain,
            str(len({s.item_id for s in ss})),
            str(len(ss)),
            f"{100 * sum(s.passed for s in ss) / k:.1f}%",
            f"{100 * truncation_rate(ss):.1f}%",
            f"{sum(s.output_tokens for s in ss) / k:.0f}",
            f"{sum(s.reasoning_tokens for s in ss) / k:.0f}",
        )
    console.print(table)
