"""Validate a merge config against the registry and the disk, and plan every output tensor, reading no weight.

Checks, all reported together where they do not depend on each other: the method exists; the number of models
fits it (SLERP and Arcee Fusion: two, one of them the base_model); parameter names belong to the method; the
data-aware methods have a calibration source for every model (`calibration.py`); every
folder has config.json and safetensors weights; tensor names and shapes agree across models; every parameter
has a valid value for every tensor. The result is a `MergePlan` the engine only executes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from branchmerge.errors import BranchmergeError
from branchmerge.merge.calibration import check_sources
from branchmerge.merge.checkpoint import SAFETENSORS_DTYPES, Checkpoint, folder_problem
from branchmerge.merge.config import MergeConfig
from branchmerge.merge.methods import METHODS, MergeMethod, TensorParams
from branchmerge.merge.parameters import layer_index, layer_tau
from branchmerge.merge.resolve import resolve_tensor
from branchmerge.merge.vocab import is_vocab_tensor, load_vocab, token_sources

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class TensorJob:
    name: str
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    params: TensorParams
    passthrough: int | None  # input whose tensor is copied as is; None = compute
    vocab: bool = False  # rows are re-indexed to the tokenizer_source's vocabulary before merging


@dataclass(frozen=True)
class MergePlan:
    config: MergeConfig
    method: MergeMethod
    inputs: list[Checkpoint]  # in input order; the method's tensors come in this order
    base: int | None  # index of the base_model in `inputs`, for methods that need one
    reference: Checkpoint  # config.json and generation_config.json come from here
    tokenizer_dir: Path
    work_dtype: torch.dtype | None
    jobs: list[TensorJob]
    vocab_index: torch.Tensor | None = None  # [inputs, output vocab] row of each input per token (vocab.py)


def _fail(source: str, problems: list[str]) -> None:
    if problems:
        raise BranchmergeError("\n".join(f"{source}: {p}" for p in problems))


def _known(names: Iterable[str]) -> str:
    listed = ", ".join(sorted(names))
    return f"known: {listed}" if listed else "it takes none"


def _check_parameter_names(cfg: MergeConfig, method: MergeMethod) -> list[str]:
    problems = []
    for name in cfg.parameters or {}:
        if name not in method.params and name not in method.model_params:
            known = _known({*method.params, *method.model_params})
            problems.append(f"parameters.{name}: not a parameter of {method.name} ({known})")
    for i, entry in enumerate(cfg.models):
        for name in entry.parameters or {}:
            field = f"models[{i}].parameters.{name}"
            if name in method.params:
                problems.append(
                    f"{field}: '{name}' is a global parameter of {method.name}; put it under top-level 'parameters'"
                )
            elif name not in method.model_params:
                problems.append(
                    f"{field}: not a per-model parameter of {method.name} ({_known(method.model_params)})"
                )
    return problems


def _inputs(cfg: MergeConfig, method: MergeMethod) -> tuple[list[tuple[str, Path]], int | None, list[str]]:
    """(field, folder) of each input in order, the base's index, and arity problems."""
    problems: list[str] = []
    inputs = [(f"models[{i}].model", Path(m.model).expanduser()) for i, m in enumerate(cfg.models)]
    keys = [p.resolve() for _, p in inputs]
    for i, key in enumerate(keys):
        if key in keys[:i]:
            problems.append(f"models[{i}].model: {cfg.models[i].model} is listed twice")
    base: int | None = None
    if method.needs_base:
        if cfg.base_model is None:  # counting inputs without the base would only add noise: stop here
            return inputs, None, [*problems, f"base_model: {method.name} needs a base_model"]
        base_path = Path(cfg.base_model).expanduser()
        if base_path.resolve() in keys:
            base = keys.index(base_path.resolve())
        else:
            inputs.append(("base_model", base_path))
            base = len(inputs) - 1
    n = len(inputs)
    names = ", ".join(str(p) for _, p in inputs)
    if method.n_inputs is not None and n != method.n_inputs:
        one_base = ", one of them the base_model" if method.needs_base else ""
        problems.append(
            f"models: {method.name} merges exactly {method.n_inputs} models{one_base}; got {n} ({names})"
        )
    elif method.needs_base and n < max(2, method.min_inputs):
        need = max(2, method.min_inputs) - 1
        problems.append(
            f"models: {method.name} needs at least {need} model{'s' if need > 1 else ''} besides the "
            f"base_model; got {n - 1} ({names})"
        )
    elif n < method.min_inputs:
        problems.append(f"models: {method.name} needs at least {method.min_inputs} models; got {n} ({names})")
    return inputs, base, problems


def _tokenizer_dir(
    cfg: MergeConfig, reference: Path, virtual: Mapping[Path, Checkpoint]
) -> tuple[Path, list[str]]:
    src = cfg.tokenizer_source
    if src is None:
        return reference, []
    if src == "base":
        if cfg.base_model is None:
            return reference, ["tokenizer_source: 'base' needs a base_model"]
        return Path(cfg.base_model).expanduser(), []
    if src == "union":
        return reference, ["tokenizer_source: 'union' is not supported; give a model folder or 'base'"]
    path = Path(src).expanduser()
    if path not in virtual and not any((path / f).is_file() for f in TOKENIZER_MARKERS):
        return path, [f"tokenizer_source: {path}: no tokenizer.json or tokenizer_config.json there"]
    return path, []


def check_agreement(ckpts: list[tuple[str, Checkpoint]], vocab_rows_may_differ: bool = False) -> list[str]:
    """Every checkpoint has the first one's tensor names and shapes; at most 5 shape lines are listed.

    With `vocab_rows_may_differ` (a tokenizer_source is set) embed_tokens / lm_head may differ in row count.
    """
    (_, ref), problems, shape_lines = ckpts[0], [], []
    for field, other in ckpts[1:]:
        missing = [n for n in ref.tensors if n not in other.tensors]
        extra = [n for n in other.tensors if n not in ref.tensors]
        if missing:
            problems.append(
                f"{field}: {other.path} lacks {len(missing)} tensors of {ref.path}, e.g. '{missing[0]}'"
            )
        if extra:
            problems.append(
                f"{field}: {other.path} has {len(extra)} tensors {ref.path} lacks, e.g. '{extra[0]}'"
            )
        for name, info in ref.tensors.items():
            o = other.tensors.get(name)
            if o is None or o.shape == info.shape:
                continue
            if vocab_rows_may_differ and is_vocab_tensor(name) and o.shape[1:] == info.shape[1:]:
                continue
            hint = "; set tokenizer_source to merge different vocabularies" if is_vocab_tensor(name) else ""
            shape_lines.append(
                f"{field}: tensor '{name}' has shape {list(o.shape)} in {other.path} "
                f"but {list(info.shape)} in {ref.path}{hint}"
            )
    if len(shape_lines) > 5:
        shape_lines = [*shape_lines[:5], f"... and {len(shape_lines) - 5} more tensors with different shapes"]
    return problems + shape_lines


def _open_all(
    source: str, cfg: MergeConfig, method: MergeMethod, virtual: Mapping[Path, Checkpoint]
) -> tuple[list[Checkpoint], int | None, Checkpoint, Path]:
    inputs, base, problems = _inputs(cfg, method)
    problems = _check_parameter_names(cfg, method) + problems + check_sources(cfg, method)
    ref_field, ref_path = inputs[base] if base is not None else inputs[0]
    if cfg.base_model is not None and base is None:  # e.g. linear: base_model only names the reference
        base_path = Path(cfg.base_model).expanduser()
        listed = [x for x in inputs if x[1].resolve() == base_path.resolve()]
        ref_field, ref_path = listed[0] if listed else ("base_model", base_path)
    tokenizer_dir, tok_problems = _tokenizer_dir(cfg, ref_path, virtual)
    folders = dict.fromkeys(
        [(ref_field, ref_path), *inputs]
    )  # the reference first: others are compared to it
    problems += [
        f"{field}: {path}: {why}"
        for field, path in folders
        if path not in virtual and (why := folder_problem(path))
    ]
    _fail(source, problems + tok_problems)
    opened = {path: virtual.get(path) or Checkpoint.open(path) for _, path in folders}
    agreement = check_agreement(
        [(field, opened[path]) for field, path in folders],
        vocab_rows_may_differ=cfg.tokenizer_source is not None,
    )
    _fail(source, agreement)
    return [opened[p] for _, p in inputs], base, opened[ref_path], tokenizer_dir


def _group(problems: dict[tuple[str, str], list[str]]) -> list[str]:
    """One line per distinct problem, naming the first tensor it hit and how many more."""
    lines = []
    for (field, message), tensors in problems.items():
        more = f" and {len(tensors) - 1} more" if len(tensors) > 1 else ""
        lines.append(f"{field}: {message} (tensor '{tensors[0]}'{more})")
    return lines


def build_plan(
    cfg: MergeConfig, source: str = "merge config", virtual: Mapping[Path, Checkpoint] | None = None
) -> MergePlan:
    """Everything `run_merge` needs, or a BranchmergeError listing every problem found.

    `virtual` stands in for folders that do not exist yet (the outputs of earlier steps of a sequence), so a
    whole sequence is checked before its first step runs.
    """
    method = METHODS.get(cfg.merge_method)
    if method is None:
        raise BranchmergeError(
            f"{source}: merge_method: '{cfg.merge_method}' is not a merge method ({_known(METHODS)})"
        )
    inputs, base, reference, tokenizer_dir = _open_all(source, cfg, method, virtual or {})

    n_layers = reference.num_layers
    if n_layers is None:
        raise BranchmergeError(f"{source}: {reference.path / 'config.json'}: no num_hidden_layers")
    out_name = cfg.out_dtype or cfg.dtype
    vocab_index = None
    if cfg.tokenizer_source is not None:
        vocab_index = _vocab_index(source, inputs, base, tokenizer_dir, virtual or {})
    settings = [(f"models[{i}].parameters", m.parameters) for i, m in enumerate(cfg.models)]
    settings += [("base_model", None)] * (len(inputs) - len(settings))
    problems: dict[tuple[str, str], list[str]] = defaultdict(list)
    jobs = []
    for name, info in inputs[base if base is not None else 0].tensors.items():
        index = layer_index(name)
        if index is not None and index >= n_layers:
            problems[("models", f"layer {index} is beyond num_hidden_layers = {n_layers}")].append(name)
        if info.dtype not in SAFETENSORS_DTYPES:
            problems[("models", f"dtype {info.dtype} cannot be merged (float tensors only)")].append(name)
            continue
        params, found = resolve_tensor(
            method, cfg.parameters, settings, base, name, layer_tau(index, n_layers)
        )
        for key in found:
            problems[key].append(name)
        passthrough = method.passthrough(params) if method.passthrough and not found else None
        out_dtype = DTYPES[out_name] if out_name else SAFETENSORS_DTYPES[info.dtype]
        params = replace(params, out_dtype=out_dtype)
        shape, vocab = info.shape, vocab_index is not None and is_vocab_tensor(name)
        if vocab:
            assert vocab_index is not None
            shape = (vocab_index.shape[1], *shape[1:])
        jobs.append(TensorJob(name, shape, out_dtype, params, passthrough, vocab))
    _fail(source, _group(problems))
    work_dtype = DTYPES[cfg.dtype] if cfg.dtype else None
    return MergePlan(cfg, method, inputs, base, reference, tokenizer_dir, work_dtype, jobs, vocab_index)


def _vocab_index(
    source: str,
    inputs: list[Checkpoint],
    base: int | None,
    tokenizer_dir: Path,
    virtual: Mapping[Path, Checkpoint],
) -> torch.Tensor:
    """Row of each input for each token of the tokenizer_source (a stand-in's tokenizer is its source's)."""

    def folder(path: Path) -> Path:
        stand_in = virtual.get(path)
        return stand_in.tokenizer_dir if stand_in is not None and stand_in.tokenizer_dir else path

    try:
        out_vocab = load_vocab(folder(tokenizer_dir))
        return token_sources(out_vocab, [load_vocab(folder(c.path)) for c in inputs], base)
    except BranchmergeError as e:
        raise BranchmergeError(f"{source}: tokenizer_source: {e}") from None
