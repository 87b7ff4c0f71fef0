"""RegMean's Gram matrices taken from the merge so far, layer by layer (RegMean++, `regmean` with sequential: true).

Nguyen et al., "RegMean++: Enhancing Effectiveness and Generalization of Regression Mean for Model Merging",
2025 (arXiv 2508.03121). Plain RegMean (`methods/regmean.py`) takes expert i's Gram matrices from expert i run
alone, but in the merged model layer l's input is what the *merged* layers before it produce. RegMean++ merges
the layers in order and feeds each later layer's regression the merged model's own activations:

    X_i^(l) = the inputs of layer l's linears for expert i's calibration examples run through the merged
              embeddings, the merged layers 0 .. l-1 and expert i's own layer l                       (1)
    W*^(l)  = RegMean of layer l's linears with G_i^(l) = X_i^(l)T X_i^(l) / N_i                        (2)

(2) is `methods/regmean.py`'s (1)-(2), alpha and per-model weights included. The order of the stages:
the tensors outside the decoder layers that are not linear weights (embeddings, the final norm) are merged
first, by the weighted average as in plain RegMean; then layer 0, 1, ..., L-1; then the linear weights outside
the layers (an untied lm_head, whose input is the merged final norm's output). Each stage's Gram matrices are
written to `work_dir` (one file per stage and expert) and the engine then merges every tensor from them exactly
as for plain RegMean; the merge computed here to feed the next stage is the same function of the same numbers.

The statistics depend on every expert and on the merge itself, so they are never put in, or read from, the
calibration cache (`calibration.py`); `work_dir` is removed after the merge.

Memory and time: one fp32 copy of the model on `device` (the merge so far, with the current stage's tensors of
one expert swapped in), every expert's tensors of one stage, and one stage's Gram matrices at a time (the
largest, down_proj's d_in^2 floats per expert: Qwen3-4B about 0.4 GB each); on disk, all Gram matrices, as
plain RegMean's cache. Each forward pass stops after the stage's layer, so stage l costs l + 1 layers per
example and the whole pass about (L + 2) / 2 times plain RegMean's forward work (L layers).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from branchmerge.errors import BranchmergeError
from branchmerge.merge.calibration import encode_for_gram, pad_id, read_source, sample, save_atomic
from branchmerge.merge.calibration_stats import gram_statistics
from branchmerge.merge.checkpoint import TensorReader
from branchmerge.merge.config import CalibrationSettings
from branchmerge.merge.parameters import layer_index
from branchmerge.merge.plan import MergePlan, TensorJob

FIRST = -1  # the stage of the tensors merged before any layer: embeddings, final norm
MergeTensor = Callable[[TensorJob, Sequence[torch.Tensor]], torch.Tensor]  # as the engine merges one tensor


def is_sequential(plan: MergePlan) -> bool:
    """Whether the plan asks for RegMean++ (`sequential` is one value for the whole merge, checked on entry)."""
    return any(bool(job.params.params.get("sequential", False)) for job in plan.jobs)


def linear_names(model: nn.Module, names: Collection[str]) -> set[str]:
    """The names among `names` that are nn.Linear weights of `model` (those with a Gram matrix)."""
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)} & set(names)


def stages(names: Sequence[str], linear: set[str], n_layers: int) -> dict[int, list[str]]:
    """Tensor names by the stage that merges them, in stage order (see the module docstring)."""
    out: dict[int, list[str]] = {}
    for name in names:
        index = layer_index(name)
        stage = index if index is not None else (n_layers if name in linear else FIRST)
        out.setdefault(stage, []).append(name)
    return dict(sorted(out.items()))


def sequential_grams(
    model: nn.Module,
    jobs: Sequence[TensorJob],
    n_layers: int,
    expert_tensors: Callable[[int, str], torch.Tensor],
    encoded: Sequence[Sequence[tuple[list[int], list[int]]]],
    merge_tensor: MergeTensor,
    save: Callable[[int, int, dict[str, torch.Tensor]], None],
    *,
    batch_size: int,
    pad_ids: Sequence[int],
    advance: Callable[[int], Any] = lambda n: None,
) -> None:
    """Merge `model` stage by stage in place, calling `save(expert, stage, grams)` with each stage's (1)-(2)
    Gram matrices. `expert_tensors(i, name)` is input i's tensor; `encoded[i]` its calibration examples.

    `model` is any module whose forward takes input_ids and attention_mask and whose parameter names are the
    checkpoint's tensor names (a transformers causal LM).
    """
    slots = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers())
    missing = [job.name for job in jobs if job.name not in slots]
    if missing:
        raise BranchmergeError(f"tensor '{missing[0]}' is not a parameter of the loaded model")
    linear = linear_names(model, [job.name for job in jobs])
    by_name = {job.name: job for job in jobs}

    @torch.no_grad()
    def put(name: str, value: torch.Tensor) -> None:
        slots[name].copy_(value)

    for stage, names in stages([job.name for job in jobs], linear, n_layers).items():
        grams: list[dict[str, torch.Tensor]] = [{} for _ in encoded]
        hooked = [n for n in names if n in linear]
        if hooked:
            for i, examples in enumerate(encoded):
                for name in names:  # expert i's own layer l, after the merged layers before it (1)
                    put(name, expert_tensors(i, name))
                grams[i], _ = gram_statistics(
                    model,
                    examples,
                    hooked,
                    batch_size=batch_size,
                    pad_id=pad_ids[i],
                    advance=advance,
                    stop_early=stage < n_layers,  # nothing after this layer is needed
                )
                save(i, stage, grams[i])
        for name in names:  # (2), and the merged tensors feed the next stage
            job = by_name[name]
            stats = [g[name] for g in grams] if name in hooked else None
            thetas = [expert_tensors(i, name) for i in range(len(encoded))]
            put(name, merge_tensor(replace(job, params=replace(job.params, stats=stats)), thetas))


def sequential_statistics(
    plan: MergePlan,
    work_dir: Path,
    merge_tensor: MergeTensor,
    *,
    device: torch.device,
    show_progress: bool = True,
) -> list[list[Path]]:
    """Per input, the files of its sequential Gram matrices (one per stage), written under `work_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s = plan.config.calibration or CalibrationSettings()
    encoded, pad_ids = [], []
    for i, ckpt in enumerate(plan.inputs):
        source = plan.config.models[i].calibration
        assert source is not None  # checked by check_sources
        tokenizer = AutoTokenizer.from_pretrained(ckpt.path)
        examples = sample(read_source(source, f"models[{i}].calibration"), s.n, s.seed)
        encoded.append(encode_for_gram(tokenizer, examples, s.max_length))
        pad_ids.append(pad_id(tokenizer))
    n_layers = plan.reference.num_layers
    assert n_layers is not None  # checked by build_plan
    model: Any = AutoModelForCausalLM.from_pretrained(plan.reference.path, dtype=torch.float32)
    model.to(device).eval()
    files: list[list[Path]] = [[] for _ in plan.inputs]

    def save(i: int, stage: int, grams: dict[str, torch.Tensor]) -> None:
        path = work_dir / f"gram-{i}-{stage + 1:04d}.safetensors"
        save_atomic(grams, path, {"kind": "gram-sequential", "model": str(plan.inputs[i].path)})
        files[i].append(path)

    names = [job.name for job in plan.jobs]
    linear = linear_names(model, names)
    n_stages = sum(any(n in linear for n in ns) for ns in stages(names, linear, n_layers).values())
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with TensorReader() as reader, Progress(*columns, disable=not show_progress) as progress:
        total = n_stages * sum(len(e) for e in encoded)
        task = progress.add_task("gram, layer by layer (sequential)", total=total)
        sequential_grams(
            model,
            plan.jobs,
            n_layers,
            lambda i, name: reader.read(plan.inputs[i], name),
            encoded,
            merge_tensor,
            save,
            batch_size=s.batch_size,
            pad_ids=pad_ids,
            advance=lambda k: progress.advance(task, k),
        )
    del model
    return files
