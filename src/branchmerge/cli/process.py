"""`branchmerge process`: run CoT processors (one, a comma-separated chain, or a preset) over traces."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from branchmerge.cli.endpoints import EngineOption, url_or_checkpoint
from branchmerge.cli.main import command, console
from branchmerge.errors import BranchmergeError


def band(option: str, value: str | None) -> tuple[int, int] | None:
    """'L:H' -> (L, H)."""
    if value is None:
        return None
    try:
        low, high = (int(x) for x in value.split(":"))
    except ValueError:
        raise BranchmergeError(f"{option} {value!r}: expected LOW:HIGH, e.g. 3:7") from None
    return low, high


def _per_domain(option: str, values: list[str] | None, kind: type) -> dict:
    out = {}
    for v in values or []:
        domain, sep, number = v.partition("=")
        try:
            out[domain] = kind(number)
        except ValueError:
            sep = ""
        if not sep or not domain:
            raise BranchmergeError(f"{option} {v!r}: expected DOMAIN=NUMBER, e.g. math=500")
    return out


def _options(config: Path | None, flags: dict[str, dict[str, Any]]) -> Any:
    """ProcessOptions from the YAML file (if any), with the flags given on the command line on top."""
    from pydantic import ValidationError

    from branchmerge.cot.registry import ProcessOptions
    from branchmerge.errors import validation_error

    data: dict[str, Any] = {}
    if config is not None:
        if not config.exists():
            raise BranchmergeError(f"{config}: file not found")
        data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise BranchmergeError(f"{config}: expected a mapping of step name -> options")
    for section, values in flags.items():
        data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    try:
        return ProcessOptions.model_validate(data)
    except ValidationError as e:
        raise validation_error(str(config or "process options"), e) from None


@command("process")
def process(
    steps: Annotated[str, typer.Argument(help="A processor, steps joined by commas, or a preset.")],
    traces: Annotated[Path, typer.Argument(help="Traces JSONL.")],
    problems: Annotated[Path, typer.Option("--problems", help="Problems JSONL the traces answer.")],
    out: Annotated[Path, typer.Option("--out", help="Output traces JSONL (kept traces).")],
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML of step options (sections as in a recipe's process)."),
    ] = None,
    policy: Annotated[
        str | None, typer.Option("--policy", help="verify: drop, keep-flagged or best-of-n.")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="dedup: Jaccard similarity of near duplicates.")
    ] = None,
    benchmark: Annotated[
        list[Path] | None,
        typer.Option("--benchmark", help="decontaminate: benchmark Problems JSONL (repeatable)."),
    ] = None,
    ngram: Annotated[int | None, typer.Option("--ngram", help="decontaminate: words per n-gram.")] = None,
    judge: Annotated[
        str | None, typer.Option("--judge", help="difficulty/rv_cd/rewrite: judge base URL or checkpoint.")
    ] = None,
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="Judge model name.")] = None,
    judge_api_key_env: Annotated[
        str | None, typer.Option("--judge-api-key-env", help="Environment variable with its API key.")
    ] = None,
    judge_cache: Annotated[
        Path | None,
        typer.Option("--judge-cache", help="Judge answers JSONL (default OUT's stem + .judge.jsonl)."),
    ] = None,
    method: Annotated[
        str | None, typer.Option("--difficulty-method", help="difficulty: judge, or student (pass rate).")
    ] = None,
    student: Annotated[
        str | None, typer.Option("--student", help="difficulty by student: base URL or checkpoint folder.")
    ] = None,
    student_model: Annotated[str | None, typer.Option("--student-model", help="Student model name.")] = None,
    engine: EngineOption = "auto",
    k: Annotated[int | None, typer.Option("--k", help="difficulty by student: samples per problem.")] = None,
    levels: Annotated[
        str | None, typer.Option("--levels", help="rewrite: difficulty levels to rewrite, e.g. easy,hard.")
    ] = None,
    rv: Annotated[str | None, typer.Option("--rv", help="sample: keep RV in LOW:HIGH.")] = None,
    cd: Annotated[str | None, typer.Option("--cd", help="sample: keep CD in LOW:HIGH.")] = None,
    per_problem: Annotated[
        str | None,
        typer.Option("--per-problem", help="sample: all, or shortest (verified) trace per problem."),
    ] = None,
    cap: Annotated[list[str] | None, typer.Option("--cap", help="sample: DOMAIN=N, repeatable.")] = None,
    weight: Annotated[
        list[str] | None, typer.Option("--weight", help="sample: DOMAIN=W, repeatable.")
    ] = None,
    total: Annotated[
        int | None, typer.Option("--total", help="sample: traces in all, with --weight.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="sample: seed of the per-domain draw.")] = None,
) -> None:
    """Run CoT processors over traces. Steps: verify, dedup, decontaminate, difficulty, rv_cd, rewrite, sample;
    presets: slow-thinking, adaptive-thinking. Writes the kept traces to OUT and, per step, a .counts.json
    (per domain before and after, why traces went, what was marked) and its verdicts; a chain keeps each
    step's output under OUT's stem + .steps/.

    Example: branchmerge process verify traces.jsonl --problems problems.jsonl --out verified.jsonl
    Example: branchmerge process adaptive-thinking traces.jsonl --problems p.jsonl --out picked.jsonl --judge http://127.0.0.1:8001/v1 --judge-model judge --rv 2:6
    """
    from branchmerge.cot.base import StepContext
    from branchmerge.cot.registry import process_traces, resolve_steps
    from branchmerge.records import Problem, Trace, read_jsonl

    chain = resolve_steps(steps)
    options = _options(
        config,
        {
            "verify": {"policy": policy},
            "dedup": {"threshold": threshold},
            "decontaminate": {"benchmarks": benchmark or None, "ngram": ngram},
            "difficulty": {"method": method, "k": k},
            "rewrite": {"levels": levels.split(",") if levels else None},
            "sample": {
                "rv": band("--rv", rv),
                "cd": band("--cd", cd),
                "per_problem": per_problem,
                "caps": _per_domain("--cap", cap, int) or None,
                "weights": _per_domain("--weight", weight, float) or None,
                "total": total,
                "seed": seed,
            },
        },
    )
    before = read_jsonl(traces, Trace)
    by_id = {p.id: p for p in read_jsonl(problems, Problem)}
    with (
        url_or_checkpoint("--judge", judge, judge_model, judge_api_key_env, engine) as judge_cfg,
        url_or_checkpoint("--student", student, student_model, None, engine) as student_cfg,
    ):
        ctx = StepContext(out.parent, out.stem, judge_cfg, student_cfg, judge_cache)
        process_traces(chain, before, by_id, options, out, ctx, on_step=print_counts)


def print_counts(counts: Any) -> None:
    from rich.table import Table

    before, after = sum(counts.before.values()), sum(counts.after.values())
    table = Table("domain", "before", "after", title=f"process {counts.step}: {before} → {after} traces")
    for domain, b, a in counts.rows():
        table.add_row(domain, str(b), str(a))
    console.print(table)
    if counts.table:
        detail = Table(*counts.table[0], title=f"{counts.step}: per teacher and domain")
        for row in counts.table:
            detail.add_row(*(str(v) for v in row.values()))
        console.print(detail)
    for reason, n in counts.removed.items():
        console.print(f"  removed {n}: {reason}")
    for reason, n in counts.flagged.items():
        console.print(f"  marked {n}: {reason}")
    if counts.note:
        console.print(f"  {counts.note}")
