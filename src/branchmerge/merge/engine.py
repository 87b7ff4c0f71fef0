"""The streaming merge: validate everything, then read -> merge -> write one tensor at a time.

Memory is one tensor per input model (in fp32) plus the output shard being filled, never a whole model, so a
70B merge fits where one layer fits. A read-ahead thread loads the next tensor's inputs while the current one
is computed; a second thread hashes the input files for the model card meanwhile. Tensors whose output is
exactly one input (SLERP at t = 0 or 1, say) are read from that input only and written byte for byte.

The output is built in a temporary sibling folder and renamed into place only when complete.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from branchmerge.errors import BranchmergeError
from branchmerge.merge.checkpoint import TensorReader
from branchmerge.merge.config import MergeConfig, load_merge_config, validate_merge_config
from branchmerge.merge.model_files import copy_support_files, sha256_file, write_config, write_model_card
from branchmerge.merge.plan import MergePlan, TensorJob, build_plan
from branchmerge.merge.writer import MAX_SHARD_BYTES, ShardWriter, plan_shards
from branchmerge.records import atomic_dir


@dataclass(frozen=True)
class MergeResult:
    out_dir: Path
    method: str
    n_tensors: int
    n_copied: int  # tensors written byte for byte from one input
    n_shards: int
    seconds: float


def _coerce(config: MergeConfig | dict | str | Path) -> tuple[MergeConfig, str]:
    """The config and the name errors should carry (the YAML file when there is one)."""
    if isinstance(config, dict):
        config = validate_merge_config(config)
    elif not isinstance(config, MergeConfig):
        config = load_merge_config(config)
    return config, config.source


def _check_out_dir(out: Path, plan: MergePlan) -> None:
    """Refuse outputs that would overwrite an input or a folder that is not an earlier merge."""
    target = out.resolve()
    for src in {*(c.path.resolve() for c in (*plan.inputs, plan.reference)), plan.tokenizer_dir.resolve()}:
        if target == src or src in target.parents or target in src.parents:
            raise BranchmergeError(
                f"{out}: the output folder overlaps the input {src}; choose another folder"
            )
    if out.exists():
        earlier_merge = (out / "merge_config.yaml").is_file()
        if not out.is_dir() or (any(out.iterdir()) and not earlier_merge):
            raise BranchmergeError(
                f"{out}: exists and is not an earlier merge output; remove it or pick another"
            )


def _read(reader: TensorReader, plan: MergePlan, job: TensorJob) -> list[torch.Tensor]:
    if job.passthrough is not None:
        return [reader.read(plan.inputs[job.passthrough], job.name)]
    return [reader.read(ckpt, job.name) for ckpt in plan.inputs]


def _compute(plan: MergePlan, job: TensorJob, raw: Sequence[torch.Tensor]) -> torch.Tensor:
    """Round inputs to the working dtype if one is set, merge in fp32, cast to the output dtype.

    `.to()` to the dtype a tensor already has returns the tensor itself, so a pass-through keeps its bytes.
    """
    if plan.work_dtype is not None:
        raw = [t.to(plan.work_dtype) for t in raw]
    if job.passthrough is not None:
        return raw[0].to(job.out_dtype)
    return plan.method.apply([t.float() for t in raw], job.params).to(job.out_dtype)


def _merge_tensors(plan: MergePlan, out_dir: Path, max_shard_bytes: int, show_progress: bool) -> int:
    """Write every planned tensor; returns the number of shards."""
    jobs = plan.jobs
    shards = plan_shards([(j.name, j.nbytes) for j in jobs], max_shard_bytes)
    writer = ShardWriter(out_dir, shards)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tensors"),
        TimeElapsedColumn(),
    )
    with (
        TensorReader() as reader,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-read") as pool,
        Progress(*columns, disable=not show_progress) as progress,
    ):
        task = progress.add_task(f"merge ({plan.method.name})", total=len(jobs))
        ahead: Future[list[torch.Tensor]] | None = pool.submit(_read, reader, plan, jobs[0]) if jobs else None
        for i, job in enumerate(jobs):
            assert ahead is not None
            raw = ahead.result()
            ahead = pool.submit(_read, reader, plan, jobs[i + 1]) if i + 1 < len(jobs) else None
            writer.add(job.name, _compute(plan, job, raw))
            del raw
            progress.advance(task)
    writer.finish()
    return len(shards)


def run_merge(
    config: MergeConfig | dict | str | Path,
    out_dir: str | Path,
    *,
    show_progress: bool = True,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> MergeResult:
    """Merge the models a mergekit-style config names into `out_dir`, a folder transformers loads.

    `config` is a MergeConfig, a dict of the YAML's content, or the path of a YAML file. Everything is
    validated before any weight is read; bad input raises BranchmergeError and leaves no output behind.
    """
    start = time.perf_counter()
    cfg, source = _coerce(config)
    plan = build_plan(cfg, source)
    out = Path(out_dir)
    _check_out_dir(out, plan)

    files = sorted({f for ckpt in plan.inputs for f in ckpt.weight_files})
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-sha256")
    try:
        digests = {f: hasher.submit(sha256_file, f) for f in files}
        with atomic_dir(out) as tmp:
            n_shards = _merge_tensors(plan, tmp, max_shard_bytes, show_progress)
            write_config(plan.reference.path, tmp, cfg.out_dtype or cfg.dtype)
            copy_support_files(plan.reference.path, plan.tokenizer_dir, tmp)
            write_model_card(tmp, cfg, {f: d.result() for f, d in digests.items()}, len(plan.jobs))
    finally:
        hasher.shutdown(wait=True, cancel_futures=True)
    return MergeResult(
        out_dir=out,
        method=plan.method.name,
        n_tensors=len(plan.jobs),
        n_copied=sum(j.passthrough is not None for j in plan.jobs),
        n_shards=n_shards,
        seconds=time.perf_counter() - start,
    )
