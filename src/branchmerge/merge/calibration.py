"""Calibration data for the data-aware merges (regmean, fisher): check the sources, compute or reuse statistics.

Each model of such a merge names its own examples (its SFT training examples, `records.SFTExample` JSONL):

    models:
      - model: experts/add
        calibration: {path: sft.jsonl, domain: add}   # or just a path: every example of the file
    calibration: {n: 256, max_length: 1024}           # optional settings, these are the defaults

`check_sources` runs with the plan, before any weight is read: every model has a source, the file exists,
parses, and holds at least one example (of the domain). `load_statistics` then takes a seeded sample of n
examples per model, runs the model on `device` (CPU by default) and computes what the method needs
(`calibration_stats.py`), one model at a time. The statistics are cached as safetensors in `cache_dir` (default:
`calibration-cache/` beside the output), keyed by the model's weight files (path, size, modification time),
the examples file's sha256, the domain and the settings, so a rerun, or another merge of the same experts,
reads them back instead of recomputing. Each cache file is written to a temporary name and renamed.
RegMean's sequential variant (`calibration_sequential.py`) computes its statistics on the merge itself, so they
depend on every expert and the settings: they are neither read from nor written to this cache.

Memory: the statistics are read one tensor at a time during the merge, beside the weights. On disk and while
they are computed, RegMean's Gram matrices take d_in^2 floats per linear layer (Qwen3-4B: about 0.5 GB per layer
and model, most of it down_proj's) and the Fisher one float per weight. These methods hold each tensor whole:
they do not stream the way the weight-only methods do.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors import safe_open
from safetensors.torch import save_file

from branchmerge.errors import BranchmergeError
from branchmerge.merge.calibration_stats import fisher_statistics, gram_statistics
from branchmerge.merge.config import CalibrationSettings, CalibrationSource, MergeConfig
from branchmerge.merge.methods import METHODS, MergeMethod
from branchmerge.merge.model_files import sha256_file
from branchmerge.records import SFTExample, read_jsonl

CACHE_VERSION = 1  # bump when the statistics' definition changes, so old cache files are not reused
DATA_AWARE = sorted(name for name, m in METHODS.items() if m.calibration is not None)


def read_source(source: CalibrationSource, field: str) -> list[SFTExample]:
    """Every example of the source (of its domain, if one is named); errors name the field and the file."""
    path = Path(source.path).expanduser()
    if not path.is_file():
        raise BranchmergeError(f"{field}.path: {path}: calibration file not found")
    try:
        examples = read_jsonl(path, SFTExample)
    except BranchmergeError as e:
        raise BranchmergeError(f"{field}.path: {e}") from None
    if source.domain is not None:
        domains = sorted({e.domain for e in examples})
        examples = [e for e in examples if e.domain == source.domain]
        if not examples:
            raise BranchmergeError(
                f"{field}.domain: {path} has no examples of domain '{source.domain}' "
                f"(domains there: {', '.join(domains) or 'none'})"
            )
    if not examples:
        raise BranchmergeError(f"{field}.path: {path}: has no examples")
    return examples


def check_sources(cfg: MergeConfig, method: MergeMethod) -> list[str]:
    """Problems with the config's calibration sources for `method`, each naming the field (and file)."""
    problems: list[str] = []
    given = [i for i, m in enumerate(cfg.models) if m.calibration is not None]
    if method.calibration is None:
        if given or cfg.calibration is not None:
            field = f"models[{given[0]}].calibration" if given else "calibration"
            problems.append(
                f"{field}: {method.name} does not use calibration data (only {', '.join(DATA_AWARE)} do)"
            )
        return problems
    if cfg.tokenizer_source is not None:
        problems.append(f"tokenizer_source: {method.name} needs the models' own vocabularies; remove it")
    sequential = (cfg.parameters or {}).get("sequential")
    if "sequential" in method.params and sequential is not None and not isinstance(sequential, bool):
        problems.append(
            f"parameters.sequential: must be true or false for the whole merge (it merges layer by layer), "
            f"got {sequential}"
        )
    for i, m in enumerate(cfg.models):
        field = f"models[{i}].calibration"
        if m.calibration is None:
            problems.append(
                f"{field}: {method.name} needs this model's own calibration examples "
                "(an SFT-example JSONL path, or {path, domain})"
            )
            continue
        try:
            read_source(m.calibration, field)
        except BranchmergeError as e:
            problems.append(str(e))
    return problems


def sample(examples: Sequence[SFTExample], n: int, seed: int) -> list[SFTExample]:
    """A seeded sample of n examples in file order (all of them when there are at most n)."""
    if len(examples) <= n:
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def cache_key(
    kind: str, model_files: Sequence[Path], source: CalibrationSource, s: CalibrationSettings
) -> str:
    """What the statistics depend on: the weights (by path, size and mtime), the examples' bytes, the settings."""
    weights = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(model_files)]
    data = {
        "version": CACHE_VERSION,
        "kind": kind,
        "weights": weights,
        "examples": sha256_file(Path(source.path).expanduser()),
        "domain": source.domain,
        "n": s.n,
        "seed": s.seed,
        "max_length": s.max_length,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def encode_for_gram(
    tokenizer: Any, examples: Sequence[SFTExample], max_length: int
) -> list[tuple[list[int], list[int]]]:
    """Every token's inputs count for a Gram matrix: the chat-templated ids, cut at max_length, no labels."""
    encoded: list[tuple[list[int], list[int]]] = []
    for e in examples:
        enc: Any = tokenizer.apply_chat_template(e.messages, tokenize=True, return_dict=True)
        encoded.append((list(enc["input_ids"])[:max_length], []))
    return encoded


def pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def compute_statistics(
    model_dir: Path,
    examples: Sequence[SFTExample],
    kind: str,
    names: Sequence[str],
    s: CalibrationSettings,
    *,
    device: torch.device,
    field: str,
    progress: Progress | None = None,
) -> dict[str, torch.Tensor]:
    """Load the model in fp32 on `device` and compute its `kind` statistics ("gram" or "fisher")."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from branchmerge.merge.search_score import encode_examples

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if kind == "gram":
        encoded = encode_for_gram(tokenizer, examples, s.max_length)
    else:  # the log-likelihood of the assistant tokens, the labels SFT trains on
        encoded = [
            (ids[: s.max_length], labels[: s.max_length])
            for ids, labels in encode_examples(tokenizer, examples, field)
        ]
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.to(device).eval()
    task = progress.add_task(f"{kind} {model_dir.name}", total=len(encoded)) if progress else None

    def advance(k: int) -> None:
        if progress is not None and task is not None:
            progress.advance(task, k)

    if kind == "gram":
        stats, _ = gram_statistics(
            model, encoded, names, batch_size=s.batch_size, pad_id=pad_id(tokenizer), advance=advance
        )
    else:
        stats = fisher_statistics(model, encoded, names, advance=advance)
    del model
    return stats


class StatisticsReader:
    """Per input, its statistics file (or files: the sequential Gram matrices come one file per layer);
    `read(name)` gives each input's statistic for one tensor (or None)."""

    def __init__(self, files: Sequence[Path | Sequence[Path]], device: torch.device):
        self.files = [[f] if isinstance(f, Path) else list(f) for f in files]
        self.device = device
        self._where: list[dict[str, Any]] = []  # per input, tensor name -> the open file holding it

    def __enter__(self) -> StatisticsReader:
        for paths in self.files:
            handles = [safe_open(f, framework="pt") for f in paths]
            self._where.append({name: h for h in handles for name in h.keys()})  # noqa: SIM118
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._where.clear()

    def read(self, name: str) -> list[torch.Tensor] | None:
        if not all(name in where for where in self._where):
            return None
        return [where[name].get_tensor(name).to(self.device) for where in self._where]


def load_statistics(
    cfg: MergeConfig,
    method: MergeMethod,
    model_dirs: Sequence[Path],
    weight_files: Sequence[Sequence[Path]],
    names: Sequence[str],
    out_dir: Path,
    *,
    device: torch.device,
    show_progress: bool = True,
) -> list[Path]:
    """The statistics file of every input (in input order), computed now or found in the cache."""
    assert method.calibration is not None
    kind = method.calibration
    s = cfg.calibration or CalibrationSettings()
    cache = Path(s.cache_dir).expanduser() if s.cache_dir else out_dir.parent / "calibration-cache"
    files = []
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show_progress) as progress:
        for i, (model_dir, model_files) in enumerate(zip(model_dirs, weight_files, strict=True)):
            source = cfg.models[i].calibration
            assert source is not None  # checked by check_sources
            key = cache_key(kind, model_files, source, s)
            path = cache / f"{kind}-{model_dir.name}-{key[:16]}.safetensors"
            if not path.is_file():
                field = f"models[{i}].calibration"
                examples = sample(read_source(source, field), s.n, s.seed)
                stats = compute_statistics(
                    model_dir, examples, kind, names, s, device=device, field=field, progress=progress
                )
                meta = {
                    "kind": kind,
                    "model": str(model_dir),
                    "examples": source.path,
                    "n": str(len(examples)),
                }
                save_atomic(stats, path, meta)
            files.append(path)
    return files
