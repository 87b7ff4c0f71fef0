"""The streaming merge: validate everything, then read -> merge -> write one tensor at a time, in three threads.

A reader thread loads the inputs of the next tensors (a bounded queue, so memory stays a few tensors), the
calling thread merges (on `device`, in fp32, a chunk at a time: `methods/chunks.py`), and a writer thread
appends each result to its safetensors shard as soon as it is ready (`writer.py`). A fourth thread hashes the
input files for the model card meanwhile, or finds their digests cached from an earlier merge (`model_files.py`).
The math runs on `runtime.policy("merge")`'s intra-op threads. Tensors whose output is exactly one input (SLERP at t = 0 or 1, say)
are read from that input only and written byte for byte. The data-aware methods (regmean, fisher) first compute
or reuse each input's calibration statistics (`calibration.py`; RegMean's sequential variant computes them layer
by layer on the merge so far, `calibration_sequential.py`) and read them beside the weights, one tensor at a
time; they do not stream, so their largest tensors are held whole.

Tensors of STREAM_MIN_ELEMENTS or more (in a Qwen3 model, the 151936-row embedding and lm_head) never sit in
memory whole when the method streams (linear, SLERP, the task-vector family) or the tensor is copied: their
inputs stay on disk as `LazyTensor`s read a chunk at a time, and each output chunk goes straight into the
shard. So peak memory is the smaller tensors in flight plus a few chunks, whatever the model's size.

The output is built in a temporary sibling folder and renamed into place only when complete. A config with
several documents is a sequence of merges ((A & B) & C), see `sequence.py`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from branchmerge import runtime
from branchmerge.errors import BranchmergeError
from branchmerge.merge.calibration import StatisticsReader, load_statistics
from branchmerge.merge.calibration_sequential import is_sequential, sequential_statistics
from branchmerge.merge.checkpoint import LazyTensor, TensorReader
from branchmerge.merge.config import MergeConfig, load_merge_configs, validate_merge_config
from branchmerge.merge.methods.chunks import chunk_slices
from branchmerge.merge.model_files import (
    SequenceCard,
    cached_sha256,
    copy_support_files,
    inputs_unchanged,
    write_config,
    write_fingerprints,
    write_model_card,
)
from branchmerge.merge.plan import MergePlan, TensorJob, build_plan
from branchmerge.merge.sequence import plan_sequence
from branchmerge.merge.vocab import align_rows, set_vocab_size
from branchmerge.merge.writer import MAX_SHARD_BYTES, ShardWriter
from branchmerge.records import atomic_dir

READ_AHEAD = 2  # tensors whose inputs are loaded while the current one is merged
STREAM_MIN_ELEMENTS = 8 << 20  # tensors this large (16 MB in bf16) are merged from disk to disk in chunks
WRITE_BEHIND = 2  # merged tensors waiting for the disk


@dataclass(frozen=True)
class MergeResult:
    out_dir: Path
    method: str
    n_tensors: int
    n_copied: int  # tensors written byte for byte from one input
    n_shards: int
    seconds: float
    input_hashes: dict[Path, str]
    order: str | None = None  # for a sequence, e.g. "((a & b) & c)"


def coerce_configs(
    config: MergeConfig | dict | Sequence[MergeConfig | dict] | str | Path,
) -> list[MergeConfig]:
    if isinstance(config, MergeConfig):
        return [config]
    if isinstance(config, dict):
        return [validate_merge_config(config)]
    if isinstance(config, str | Path):
        return load_merge_configs(config)
    return [
        c if isinstance(c, MergeConfig) else validate_merge_config(c, f"merge config (step {i + 1})")
        for i, c in enumerate(config)
    ]


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


def _streamed(plan: MergePlan, job: TensorJob) -> bool:
    """Whether a tensor is too large to hold whole and can be merged or copied chunk by chunk from disk."""
    if job.vocab or math.prod(job.shape) < STREAM_MIN_ELEMENTS:
        return False
    used = plan.inputs if job.passthrough is None else [plan.inputs[job.passthrough]]
    safetensors = all(ckpt.tensors[job.name].file.suffix == ".safetensors" for ckpt in used)
    return safetensors and (job.passthrough is not None or plan.method.streams)


def _read(
    reader: TensorReader, plan: MergePlan, job: TensorJob, device: torch.device
) -> Sequence[torch.Tensor | LazyTensor]:
    used = plan.inputs if job.passthrough is None or job.vocab else [plan.inputs[job.passthrough]]
    if _streamed(plan, job):
        return [reader.lazy(ckpt, job.name, plan.work_dtype, device) for ckpt in used]
    return [reader.read(ckpt, job.name) for ckpt in used]


def _compute(
    plan: MergePlan, job: TensorJob, raw: Sequence[torch.Tensor], device: torch.device
) -> torch.Tensor:
    """Round inputs to the working dtype if one is set, merge in fp32, cast to the output dtype.

    `.to()` to the dtype a tensor already has returns the tensor itself, so a pass-through keeps its bytes.
    """
    if plan.work_dtype is not None:
        raw = [t.to(plan.work_dtype) for t in raw]
    if job.vocab:
        assert plan.vocab_index is not None
        raw = align_rows(raw, plan.vocab_index, plan.base)
        if job.passthrough is not None:
            return raw[job.passthrough].to(job.out_dtype)
    if job.passthrough is not None:
        return raw[0].to(job.out_dtype)
    thetas = [t.to(device, non_blocking=True) for t in raw]  # widened to fp32 by the method, chunk by chunk
    merged = plan.method.apply(thetas, job.params)
    assert merged is not None
    return merged.to(job.out_dtype).to("cpu")


def _stream(plan: MergePlan, job: TensorJob, lazy: Sequence[LazyTensor], writer: ShardWriter) -> None:
    """Merge (or copy) one large tensor chunk by chunk from disk straight into its shard."""
    stream = writer.stream(job.name)
    if job.passthrough is not None:
        (source,) = lazy
        for sl in chunk_slices(source.numel()):
            stream.write(source[sl].to(job.out_dtype))
    else:
        plan.method.apply(cast(list[torch.Tensor], lazy), replace(job.params, sink=stream.write))
    stream.close()


def _read_ahead(
    pool: ThreadPoolExecutor, reader: TensorReader, plan: MergePlan, device: torch.device
) -> Iterator[Sequence[torch.Tensor | LazyTensor]]:
    """Inputs of each job in order, keeping up to READ_AHEAD jobs loading in the background."""
    pending: list[Future[Sequence[torch.Tensor | LazyTensor]]] = []
    for job in plan.jobs:
        pending.append(pool.submit(_read, reader, plan, job, device))
        if len(pending) > READ_AHEAD:
            yield pending.pop(0).result()
    while pending:
        yield pending.pop(0).result()


def _merge_tensors(
    plan: MergePlan,
    out_dir: Path,
    max_shard_bytes: int,
    show_progress: bool,
    device: torch.device,
    stats: StatisticsReader | None = None,
) -> int:
    """Write every planned tensor; returns the number of shards. `stats`: the data-aware methods' statistics."""
    writer = ShardWriter(out_dir, [(j.name, j.shape, j.out_dtype) for j in plan.jobs], max_shard_bytes)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tensors"),
        TimeElapsedColumn(),
    )
    writes: list[Future[None]] = []
    # OpenMP's thread count is per thread: the reader and writer get the math thread's, not the default
    same_threads = functools.partial(torch.set_num_threads, torch.get_num_threads())
    try:
        with (
            TensorReader() as reader,
            ThreadPoolExecutor(1, "merge-read", initializer=same_threads) as read_pool,
            ThreadPoolExecutor(1, "merge-write", initializer=same_threads) as write_pool,
            Progress(*columns, disable=not show_progress) as progress,
        ):
            task = progress.add_task(f"merge ({plan.method.name})", total=len(plan.jobs))
            for job, raw in zip(plan.jobs, _read_ahead(read_pool, reader, plan, device), strict=True):
                if _streamed(plan, job):
                    for w in writes:  # the writer is free once earlier tensors are out
                        w.result()
                    writes.clear()
                    _stream(plan, job, cast(list[LazyTensor], raw), writer)
                    progress.advance(task)
                    continue
                if stats is not None:
                    job = replace(job, params=replace(job.params, stats=stats.read(job.name)))
                merged = _compute(plan, job, cast(list[torch.Tensor], raw), device)
                del raw
                writes.append(write_pool.submit(writer.add, job.name, merged))
                del merged
                while len(writes) > WRITE_BEHIND or (writes and writes[0].done()):
                    writes.pop(0).result()  # re-raises a write error here, and bounds memory
                progress.advance(task)
            for w in writes:
                w.result()
    finally:
        writer.abort()
    writer.finish()
    return len(writer.shards)


@contextlib.contextmanager
def _statistics(
    plan: MergePlan, out: Path, device: torch.device, show_progress: bool
) -> Iterator[StatisticsReader | None]:
    """For a data-aware method (regmean, fisher), its inputs' calibration statistics; else None."""
    if plan.method.calibration is None:
        yield None
        return
    if is_sequential(plan):  # RegMean++: computed afresh beside the output, never cached
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.grams-", dir=out.parent) as work:
            seq_files = sequential_statistics(
                plan,
                Path(work),
                lambda job, raw: _compute(plan, job, raw, device),
                device=device,
                show_progress=show_progress,
            )
            with StatisticsReader(seq_files, device) as reader:
                yield reader
        return
    files = load_statistics(
        plan.config,
        plan.method,
        [c.path for c in plan.inputs],
        [c.weight_files for c in plan.inputs],
        [j.name for j in plan.jobs],
        out,
        device=device,
        show_progress=show_progress,
    )
    with StatisticsReader(files, device) as reader:
        yield reader


def _weight_files(plan: MergePlan) -> list[Path]:
    return sorted({f for ckpt in plan.inputs for f in ckpt.weight_files})


def _merge_one(
    plan: MergePlan,
    out: Path,
    *,
    show_progress: bool,
    max_shard_bytes: int,
    device: torch.device,
    sequence: SequenceCard | None = None,
) -> MergeResult:
    start = time.perf_counter()
    cfg = plan.config
    _check_out_dir(out, plan)
    files = _weight_files(plan)
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-sha256")
    try:
        digests = {f: hasher.submit(cached_sha256, f) for f in files}
        with _statistics(plan, out, device, show_progress) as stats, atomic_dir(out) as tmp:
            n_shards = _merge_tensors(plan, tmp, max_shard_bytes, show_progress, device, stats)
            write_config(plan.reference.path, tmp, cfg.out_dtype or cfg.dtype)
            if plan.vocab_index is not None:
                set_vocab_size(tmp / "config.json", plan.vocab_index.shape[1])
            copy_support_files(plan.reference.path, plan.tokenizer_dir, tmp)
            hashes = {f: d.result() for f, d in digests.items()}
            write_model_card(tmp, cfg, hashes, len(plan.jobs), sequence)
            write_fingerprints(tmp, files)
    finally:
        hasher.shutdown(wait=True, cancel_futures=True)
    return MergeResult(
        out_dir=out,
        method=plan.method.name,
        n_tensors=len(plan.jobs),
        n_copied=sum(j.passthrough is not None for j in plan.jobs),
        n_shards=n_shards,
        seconds=time.perf_counter() - start,
        input_hashes=hashes,
    )


def _device(device: str | torch.device | None) -> torch.device:
    d = torch.device(device or "cpu")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise BranchmergeError(f"--device {device}: no CUDA device is visible here; use --device cpu")
    return d


def run_merge(
    config: MergeConfig | dict | Sequence[MergeConfig | dict] | str | Path,
    out_dir: str | Path,
    *,
    show_progress: bool = True,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    device: str | torch.device | None = None,
    intermediate_dir: str | Path | None = None,
    threads: int | None = None,
) -> MergeResult:
    """Merge the models a mergekit-style config names into `out_dir`, a folder transformers loads.

    `config` is a MergeConfig, a dict of the YAML's content, a list of them (a sequence of named steps, see
    `sequence.py`), or the path of a YAML file with one or more documents. Everything is validated before any
    weight is read; bad input raises BranchmergeError and leaves no output behind. `device` is where the math
    runs ("cuda" on a GPU machine). A sequence's intermediate outputs go to `intermediate_dir` when given (and
    are reused by a rerun with the same steps), else to a temporary folder removed at the end. `threads`: torch
    intra-op threads for the math (default: `runtime.policy("merge")`).
    """
    with runtime.using("merge", threads):
        return _run_merge(config, out_dir, show_progress, max_shard_bytes, device, intermediate_dir)


def _run_merge(
    config: MergeConfig | dict | Sequence[MergeConfig | dict] | str | Path,
    out_dir: str | Path,
    show_progress: bool,
    max_shard_bytes: int,
    device: str | torch.device | None,
    intermediate_dir: str | Path | None,
) -> MergeResult:
    start = time.perf_counter()
    configs = coerce_configs(config)
    out = Path(out_dir)
    dev = _device(device)
    merge_one = functools.partial(
        _merge_one, show_progress=show_progress, max_shard_bytes=max_shard_bytes, device=dev
    )
    if len(configs) == 1 and configs[0].name is None:
        return merge_one(build_plan(configs[0], configs[0].source), out)

    keep = intermediate_dir is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    steps_dir = (
        Path(intermediate_dir)
        if intermediate_dir is not None
        else Path(tempfile.mkdtemp(prefix=f".{out.name}.steps-", dir=out.parent))
    )
    try:
        seq = plan_sequence(configs, out, steps_dir.absolute())
        hashes: dict[Path, str] = {}
        for step, step_out in zip(seq.steps[:-1], seq.outputs[:-1], strict=True):
            plan = build_plan(step, step.source)
            if (
                keep
                and (step_out / "merge_config.yaml").is_file()
                and ((step_out / "merge_config.yaml").read_text(encoding="utf-8") == step.to_yaml())
                and inputs_unchanged(step_out, _weight_files(plan))
            ):
                continue  # finished by an earlier run with this very step and these very inputs
            hashes |= merge_one(plan, step_out).input_hashes
        card = SequenceCard(seq.order, [c.to_yaml() for c in configs], hashes)
        last = merge_one(build_plan(seq.steps[-1], seq.steps[-1].source), out, sequence=card)
    finally:
        if not keep:
            shutil.rmtree(steps_dir, ignore_errors=True)
    return MergeResult(
        out_dir=out,
        method=last.method,
        n_tensors=last.n_tensors,
        n_copied=last.n_copied,
        n_shards=last.n_shards,
        seconds=time.perf_counter() - start,
        input_hashes={**hashes, **last.input_hashes},
        order=seq.order,
    )
