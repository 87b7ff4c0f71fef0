"""Task-vector analysis: how far, and in which directions, experts fine-tuned from one base moved away from it.

For expert t and one tensor, the task vector is delta_t = theta_t - theta_base (TIES, Yadav et al. 2023, eq. 1).
Reported per tensor, per decoder layer, per (layer, tensor kind) cell and for the whole model:
  - ||delta_t||_2 and the relative norm ||delta_t|| / ||theta_base||;
  - cos(delta_i, delta_j) = <delta_i, delta_j> / (||delta_i|| ||delta_j||) for each pair of experts. TinyR1's
    Branch-Merge assumes experts from one base update nearly orthogonal directions (cos close to 0);
  - the TIES sign-conflict rate: trim each delta_t as the TIES merge does (step 1, `keep_top_magnitude`: keep the
    k = max(1, int(density * numel)) largest |delta_t|); among the coordinates where at least two experts' trimmed
    deltas are nonzero (the "overlap"), the fraction whose nonzero values do not all share one sign (a "conflict");
  - the top-share: the share of sum_p |delta_t^p| held by the k = ceil(top_fraction * numel) largest |delta_t^p|.

Aggregates add up the sums these ratios are made of (dot products, squared norms, masses, counts), so a layer's
cosine is the cosine of its tensors' concatenated deltas, never a mean of per-tensor cosines. The top-share is
the one exception: an aggregate's is (sum over its tensors of each tensor's top-k mass) / (its total mass), the
top-k being taken within each tensor, because a global top-k would need a whole layer in memory.

Streams like the merge: one tensor per model in memory at a time, fp32 arithmetic, sums accumulated in float64.
The tables, CSV, summary.md and heatmap.png are written by `analysis_report`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import TypeVar

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from branchmerge.errors import BranchmergeError
from branchmerge.merge.analysis_report import write_analysis
from branchmerge.merge.checkpoint import SAFETENSORS_DTYPES, Checkpoint, TensorReader, folder_problem
from branchmerge.merge.methods.task_vector import keep_top_magnitude
from branchmerge.merge.parameters import layer_index
from branchmerge.merge.plan import check_agreement

CHUNK = 1 << 20  # elements per float64 block: bounds the extra memory of exact accumulation
K = TypeVar("K")


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else math.nan


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


@dataclass
class Sums:
    """The additive sums behind every reported ratio, over one tensor or many (`add` pools them)."""

    gram: list[list[float]]  # gram[i][j] = <delta_i, delta_j>; the diagonal holds ||delta_i||^2
    mass: list[float]  # sum_p |delta_t^p|
    top_mass: list[float]  # sum of the top-k |delta_t^p|, k taken within each tensor
    numel: int = 0
    base_sq: float = 0.0  # ||theta_base||^2
    overlap: int = 0  # coordinates where >= 2 trimmed deltas are nonzero
    conflict: int = 0  # overlap coordinates whose nonzero trimmed deltas differ in sign

    @classmethod
    def zeros(cls, n_experts: int) -> Sums:
        return cls([[0.0] * n_experts for _ in range(n_experts)], [0.0] * n_experts, [0.0] * n_experts)

    def add(self, other: Sums) -> None:
        n = len(self.mass)
        for i in range(n):
            self.gram[i] = [self.gram[i][j] + other.gram[i][j] for j in range(n)]
            self.mass[i] += other.mass[i]
            self.top_mass[i] += other.top_mass[i]
        self.numel += other.numel
        self.base_sq += other.base_sq
        self.overlap += other.overlap
        self.conflict += other.conflict

    def norm(self, t: int) -> float:
        return math.sqrt(self.gram[t][t])

    def rel_norm(self, t: int) -> float:
        return _ratio(self.norm(t), math.sqrt(self.base_sq))

    def cosine(self, i: int, j: int) -> float:
        return _ratio(self.gram[i][j], math.sqrt(self.gram[i][i] * self.gram[j][j]))

    def top_share(self, t: int) -> float:
        return _ratio(self.top_mass[t], self.mass[t])

    def sign_conflict(self) -> float:
        return _ratio(self.conflict, self.overlap)

    def mean_cosine(self) -> float:
        return _mean([self.cosine(i, j) for i, j in combinations(range(len(self.mass)), 2)])

    def mean_rel_norm(self) -> float:
        return _mean([self.rel_norm(t) for t in range(len(self.mass))])

    def mean_top_share(self) -> float:
        return _mean([self.top_share(t) for t in range(len(self.mass))])


def tensor_sums(
    theta_base: torch.Tensor, thetas: Sequence[torch.Tensor], top_fraction: float, density: float
) -> Sums:
    """The sums for one tensor of the base and the same tensor of each expert."""
    base = theta_base.float().flatten()
    deltas = [theta_t.float().flatten() - base for theta_t in thetas]  # delta_t = theta_t - theta_base
    n, s = base.numel(), Sums.zeros(len(deltas))
    gram = torch.zeros(len(deltas), len(deltas), dtype=torch.float64)
    mass = torch.zeros(len(deltas), dtype=torch.float64)
    for start in range(0, n, CHUNK):
        block = torch.stack([d[start : start + CHUNK] for d in deltas]).double()  # experts x chunk
        gram += block @ block.T
        mass += block.abs().sum(dim=1)
        s.base_sq += float(base[start : start + CHUNK].double().square().sum())
    k = min(n, math.ceil(round(top_fraction * n, 6)))  # rounding: 0.07 * 100 must give 7, not 8
    s.gram, s.mass, s.numel = gram.tolist(), mass.tolist(), n
    s.top_mass = [float(d.abs().topk(k, sorted=False).values.double().sum()) for d in deltas]
    if len(deltas) >= 2:
        pos = torch.zeros(n, dtype=torch.int16)
        neg = torch.zeros(n, dtype=torch.int16)
        for d in deltas:
            hat = keep_top_magnitude(d, density)  # TIES step 1: trim
            pos += hat > 0
            neg += hat < 0
        s.overlap = int((pos + neg >= 2).sum())
        s.conflict = int(((pos > 0) & (neg > 0)).sum())
    return s


def tensor_kind(name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> q_proj, `lm_head.weight` -> lm_head; biases keep `.bias`."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[-1] in ("weight", "bias"):
        return parts[-2] if parts[-1] == "weight" else f"{parts[-2]}.bias"
    return parts[-1]


@dataclass(frozen=True)
class TensorRow:
    name: str
    layer: int | None  # None for embeddings, final norm and lm_head
    kind: str
    shape: tuple[int, ...]
    sums: Sums


@dataclass(frozen=True)
class AnalysisResult:
    base: Path
    experts: list[Path]
    labels: list[str]  # short expert names used in tables (folder names, or paths when those repeat)
    top_fraction: float
    density: float
    tensors: list[TensorRow]
    skipped: list[str]  # non-float tensors (not task vectors)
    files: list[Path] = field(default_factory=list)

    def group(self, key: Callable[[TensorRow], K | None]) -> dict[K, Sums]:
        """Pooled sums per key value, in the tensors' order; rows whose key is None are left out."""
        out: dict[K, Sums] = {}
        for r in self.tensors:
            if (k := key(r)) is not None:
                out.setdefault(k, Sums.zeros(len(self.experts))).add(r.sums)
        return out

    @property
    def layers(self) -> dict[int, Sums]:
        return dict(sorted(self.group(lambda r: r.layer).items()))

    @property
    def total(self) -> Sums:
        return self.group(lambda r: "model").get("model", Sums.zeros(len(self.experts)))

    def cells(self) -> dict[tuple[int, str], Sums]:
        """(layer, kind) -> pooled sums, for the heatmap."""
        return self.group(lambda r: None if r.layer is None else (r.layer, r.kind))


def _labels(paths: Sequence[Path]) -> list[str]:
    names = [p.name or str(p) for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def _open_inputs(base: Path, experts: Sequence[Path]) -> list[Checkpoint]:
    """The base and the experts' headers, or one error listing every unusable or disagreeing folder."""
    fields = [("base", base), *((f"experts[{i}]", p) for i, p in enumerate(experts))]
    problems = [f"{name}: {path}: {why}" for name, path in fields if (why := folder_problem(path))]
    if not experts:
        problems.append("experts: give at least one expert folder fine-tuned from the base")
    resolved = [p.resolve() for _, p in fields]
    for i, (name, path) in enumerate(fields[1:], start=1):
        if resolved[i] == resolved[0]:
            problems.append(f"{name}: {path} is the base folder itself; its task vector would be zero")
        elif resolved[i] in resolved[1:i]:
            problems.append(f"{name}: {path} is listed twice")
    if problems:
        raise BranchmergeError("\n".join(problems))
    opened = [(name, Checkpoint.open(path)) for name, path in fields]
    if mismatches := check_agreement(opened):
        raise BranchmergeError("\n".join(mismatches))
    return [ckpt for _, ckpt in opened]


def analyze_task_vectors(
    base: str | Path,
    experts: Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    top_fraction: float = 0.01,
    density: float = 0.2,
    show_progress: bool = True,
) -> AnalysisResult:
    """Analyse the experts' task vectors against `base`; with `out_dir`, write analysis.csv, summary.md, heatmap.png.

    top_fraction: the top-share's k = ceil(top_fraction * numel) per tensor. density: TIES trim before counting
    sign conflicts (0.2 is the TIES paper's top-20%; 1 counts every nonzero coordinate). Every folder, tensor name
    and shape is checked before any weight is read; bad input raises BranchmergeError.
    """
    settings = (("top_fraction", top_fraction), ("density", density))
    problems = [f"{name}: must be in (0, 1]; got {v}" for name, v in settings if not 0 < v <= 1]
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and out.exists() and not out.is_dir():
        problems.append(f"out_dir: {out} exists and is not a folder")
    if problems:
        raise BranchmergeError("\n".join(problems))
    base_ckpt, *expert_ckpts = _open_inputs(Path(base), [Path(e) for e in experts])

    names = [n for n, info in base_ckpt.tensors.items() if info.dtype in SAFETENSORS_DTYPES]
    rows: list[TensorRow] = []
    columns = (TextColumn("[bold]analyze"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with TensorReader() as reader, Progress(*columns, disable=not show_progress) as bar:
        task = bar.add_task("analyze", total=len(names))
        for name in names:  # one tensor per model in memory
            thetas = [reader.read(c, name) for c in expert_ckpts]
            sums = tensor_sums(reader.read(base_ckpt, name), thetas, top_fraction, density)
            shape = base_ckpt.tensors[name].shape
            rows.append(TensorRow(name, layer_index(name), tensor_kind(name), shape, sums))
            bar.advance(task)
    paths = [c.path for c in expert_ckpts]
    skipped = [n for n in base_ckpt.tensors if n not in set(names)]
    result = AnalysisResult(base_ckpt.path, paths, _labels(paths), top_fraction, density, rows, skipped)
    return replace(result, files=write_analysis(result, out)) if out is not None else result
