"""Comparing two checkpoints tensor by tensor in units in the last place (ulps).

The distance between two values a and b is |a - b| divided by the ulp of the larger magnitude of the two,
ulp(m) = 2^(floor(log2 m) - p) with p the stored mantissa bits (bf16: 7, fp16: 10, fp32: 23); below the
smallest normal the subnormal spacing is used. So for two bf16 numbers of the same sign and binade the
distance is exactly the distance of their bit patterns (1 = neighbours), a pair straddling a power of two is
0.5, and 0 and x != 0 are far apart (a different selection, not a rounding). Computed in float64, in chunks,
so a 150M-entry embedding costs a few tens of MB.

Every distance is reported twice: in bf16 ulps (the yardstick for "agrees to rounding") and in ulps of the
tensors' own dtype (for fp32 outputs, where one bf16 ulp is 65536 fp32 ulps).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from _checkpoints import weight_files
from safetensors import safe_open

MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23, torch.float64: 52}
MIN_NORMAL_EXP = {torch.bfloat16: -126, torch.float16: -14, torch.float32: -126, torch.float64: -1022}
CHUNK = 1 << 22


def ulp_distance(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Elementwise |a - b| in ulps of `dtype` at max(|a|, |b|), float64; NaN vs NaN is 0, NaN vs number inf."""
    a64, b64 = a.double(), b.double()
    m = torch.maximum(a64.abs(), b64.abs())
    _, e = torch.frexp(m)  # m = f * 2^e with f in [0.5, 1), so floor(log2 m) = e - 1
    exponent = torch.clamp(e - 1, min=MIN_NORMAL_EXP[dtype]) - MANTISSA_BITS[dtype]
    d = (a64 - b64).abs() / torch.ldexp(torch.ones_like(m), exponent)
    nan_a, nan_b = a64.isnan(), b64.isnan()
    d = torch.where(nan_a & nan_b, 0.0, d)
    return torch.where(nan_a ^ nan_b, float("inf"), d)


@dataclass
class TensorDiff:
    name: str
    dtype: str
    numel: int
    max_ulp_bf16: float
    n_over_1ulp_bf16: int  # elements more than one bf16 ulp apart
    max_ulp_native: float  # in ulps of `dtype`
    max_abs: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def diff_tensor(name: str, a: torch.Tensor, b: torch.Tensor) -> TensorDiff:
    a_flat, b_flat = a.flatten(), b.flatten()
    max_bf16 = max_native = max_abs = 0.0
    n_over = 0
    for start in range(0, a_flat.numel(), CHUNK):
        x, y = a_flat[start : start + CHUNK], b_flat[start : start + CHUNK]
        d = ulp_distance(x, y, torch.bfloat16)
        max_bf16 = max(max_bf16, float(d.max()))
        n_over += int((d > 1).sum())
        max_native = max(max_native, float(ulp_distance(x, y, a.dtype).max()))
        max_abs = max(max_abs, float((x.double() - y.double()).abs().nan_to_num(float("inf")).max()))
    return TensorDiff(
        name, str(a.dtype).removeprefix("torch."), a.numel(), max_bf16, n_over, max_native, max_abs
    )


def _index(model_dir: Path) -> dict[str, Path]:
    names: dict[str, Path] = {}
    for file in weight_files(model_dir):
        with safe_open(file, framework="pt") as f:
            names.update(dict.fromkeys(f.keys(), file))  # noqa: SIM118
    return names


@dataclass
class CheckpointDiff:
    tensors: list[TensorDiff]
    only_a: list[str]  # tensor names one side lacks
    only_b: list[str]
    mismatched: list[str]  # "name: shape a vs b", not compared
    dtypes: list[str]  # "name: dtype a vs b"; compared after casting b to a's dtype

    @property
    def max_ulp_bf16(self) -> float:
        return max((t.max_ulp_bf16 for t in self.tensors), default=0.0)

    @property
    def n_over_1ulp_bf16(self) -> int:
        return sum(t.n_over_1ulp_bf16 for t in self.tensors)

    @property
    def max_ulp_native(self) -> float:
        return max((t.max_ulp_native for t in self.tensors), default=0.0)

    @property
    def same_layout(self) -> bool:
        return not (self.only_a or self.only_b or self.mismatched)

    def worst(self, n: int = 3, threshold: float = 1.0) -> list[TensorDiff]:
        """Up to n tensors above `threshold` bf16 ulps, worst first."""
        over = [t for t in self.tensors if t.max_ulp_bf16 > threshold]
        return sorted(over, key=lambda t: (-t.max_ulp_bf16, -t.n_over_1ulp_bf16))[:n]


def compare_checkpoints(dir_a: Path, dir_b: Path) -> CheckpointDiff:
    """Every tensor the two folders share, read one pair at a time, in a's dtype when the dtypes differ."""
    index_a, index_b = _index(dir_a), _index(dir_b)
    diffs: list[TensorDiff] = []
    mismatched: list[str] = []
    dtypes: list[str] = []
    for name, file_a in index_a.items():
        if name not in index_b:
            continue
        with safe_open(file_a, framework="pt") as fa, safe_open(index_b[name], framework="pt") as fb:
            a, b = fa.get_tensor(name), fb.get_tensor(name)
        if a.shape != b.shape:
            mismatched.append(f"{name}: shape {list(a.shape)} vs {list(b.shape)}")
            continue
        if a.dtype != b.dtype:
            dtypes.append(f"{name}: {a.dtype} vs {b.dtype}")
            b = b.to(a.dtype)
        diffs.append(diff_tensor(name, a, b))
    only_a = [n for n in index_a if n not in index_b]
    only_b = [n for n in index_b if n not in index_a]
    return CheckpointDiff(diffs, only_a, only_b, mismatched, dtypes)
