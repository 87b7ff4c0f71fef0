"""The one task-vector merge that task arithmetic, TIES and DARE are settings of.

Every such method works on task vectors delta_t = theta_t - theta_base and differs only in
  - how each delta is sparsified: not at all (task arithmetic), keep the top-k by magnitude (TIES's "trim"),
    or drop entries at random (DARE), optionally rescaled so the L1 norm is unchanged;
  - whether entries are combined only where they agree with an elected sign (TIES's "elect" + "disjoint merge").
So a method file picks a `TaskVectorSettings` and this module does the rest (variants are settings, not copies).

Conventions follow mergekit 0.1.5's generalized task arithmetic:
  - k = max(1, int(density * numel)) entries are kept by magnitude when 0 < density < 1; density <= 0 keeps none;
  - `rescale` multiplies a sparsified delta by |delta|_1 / |kept|_1 (skipped when either is < 1e-7), which is
    what mergekit does for DARE instead of the paper's 1 / density;
  - the sign is elected from the weighted, sparsified deltas (sign(sum_t w_t delta_t), 0 counted as +); with
    `normalize` the divisor is sum w_t over the entries that agree with it (1 where none agrees), without sign
    consensus it is sum w_t (1 when |sum w_t| < 1e-8);
  - the merged delta is scaled by `lambda` and added to the base.
Math is fp32 (mergekit computes in the working dtype, bf16 for bf16 configs; fp32 is the more exact of the two).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from branchmerge.merge.methods import chunks
from branchmerge.merge.methods.chunks import chunk_slices, flat, map_chunks, widen_small
from branchmerge.merge.methods.contract import ParamSpec, TensorParams

RESCALE_EPS = 1e-7


@dataclass(frozen=True)
class TaskVectorSettings:
    sparsify: Literal["none", "magnitude", "random"]
    sign_consensus: bool


Index = slice | torch.Tensor  # a chunk of the flattened tensor, or the positions of a sample


@dataclass
class TopK:
    """Which entries TIES's trim keeps: |delta| > threshold, and the first `ties` entries equal to it.

    `mask` is called on consecutive chunks in index order and uses up `ties` as it goes, so tied entries at the
    boundary are kept in index order (deterministic on any device).
    """

    threshold: torch.Tensor  # 0-dim, same dtype as the magnitudes
    ties: int
    n_equal: int  # entries equal to the threshold (ties <= n_equal; < means ties straddle the boundary)
    kept_l1: float  # sum of the kept magnitudes (for `rescale`; 0 unless asked for)
    l1: float  # sum of all magnitudes (likewise)

    def mask(self, magnitude: torch.Tensor) -> torch.Tensor:
        keep = magnitude > self.threshold
        if self.ties > 0:
            tied = magnitude == self.threshold
            n_tied = int(torch.count_nonzero(tied))
            if n_tied <= self.ties:
                keep |= tied
            else:
                keep[tied.nonzero().flatten()[: self.ties]] = True
            self.ties -= min(n_tied, self.ties)
        return keep


SAMPLE = 1 << 16  # magnitudes sampled to bracket the k-th largest


def top_k(magnitude: Callable[[Index], torch.Tensor], n: int, k: int, l1: bool = False) -> TopK:
    """The k-th largest of n magnitudes (computed chunk by chunk by `magnitude`), exactly, in one pass.

    `kthvalue` over a whole 78M-entry embedding takes 2.4 s on one core and a full fp32 copy. Instead, a fixed
    sample of 65536 magnitudes brackets the k-th largest between two of its order statistics (5 standard
    deviations either side of where it should fall); one pass counts the entries above the bracket and collects
    those inside it (about 2% of them), and `kthvalue` on those finds it. If the bracket misses, which a
    sample can do only by a > 5-sigma fluke, it falls back to `kthvalue` over all of them: never wrong, only
    slower. With `l1`, the pass also sums all magnitudes and the kept ones (for `rescale`); else both are 0.
    """
    slices = chunk_slices(n)
    lo, hi = _bracket(magnitude, n, k) if n > 8 * SAMPLE or len(slices) > 1 else (0.0, float("inf"))
    above = 0
    above_l1 = total_l1 = 0.0
    inside: list[torch.Tensor] = []
    # counting and collecting are exact in any order, so they go block by block (`chunks.BLOCK`, cache-sized);
    # the L1 sums stay whole chunks, whose fp64 sums `rescale` depends on
    for sl in (sub for chunk in slices for sub in chunks.blocks(chunk, None if l1 else chunks.BLOCK)):
        m = magnitude(sl)
        big = m > hi
        above += int(torch.count_nonzero(big))
        if l1:
            total_l1 += float(m.sum(dtype=torch.float64))
            above_l1 += float(m[big].sum(dtype=torch.float64))
        inside.append(m[(m >= lo) & (m <= hi)])
    candidates = torch.cat(inside)
    if not above < k <= above + candidates.numel():  # the bracket missed: select among all of them
        candidates, above, above_l1 = torch.cat([magnitude(sl) for sl in slices]), 0, 0.0
    rank = k - above  # the k-th largest overall is the rank-th largest candidate
    threshold = candidates.kthvalue(candidates.numel() - rank + 1).values
    greater = candidates[candidates > threshold]
    ties = rank - greater.numel()
    kept_l1 = above_l1 + float(greater.sum(dtype=torch.float64)) + ties * float(threshold) if l1 else 0.0
    return TopK(threshold, ties, int((candidates == threshold).sum()), kept_l1, total_l1)


def _bracket(magnitude: Callable[[Index], torch.Tensor], n: int, k: int) -> tuple[float, float]:
    """(lo, hi) that hold the k-th largest of the n magnitudes with overwhelming probability."""
    generator = torch.Generator().manual_seed(0)
    positions = torch.randint(n, (SAMPLE,), generator=generator)
    sample = magnitude(positions)
    q = k / n
    where = q * SAMPLE
    margin = 5 * math.sqrt(SAMPLE * q * (1 - q)) + 8
    top, bottom = math.floor(where - margin), math.ceil(where + margin)  # 0-based ranks, largest first
    hi = float(sample.kthvalue(SAMPLE - top).values) if top > 0 else float("inf")
    lo = float(sample.kthvalue(SAMPLE - bottom).values) if bottom < SAMPLE else 0.0
    return lo, hi


def keep_top_magnitude(delta: torch.Tensor, density: float, argsort_ties: bool = False) -> torch.Tensor:
    """Zero all but the k = max(1, int(density * numel)) entries of largest |delta| (TIES "trim").

    The k-th largest magnitude is found by `top_k` (linear time, not a sort). Entries tied with it at the
    boundary are kept in index order, which is deterministic on any device. mergekit instead takes the first k
    of `torch.argsort(descending=True)`, whose order among equal values is the sort's own; `argsort_ties`
    reproduces that (bit parity with mergekit on CPU) at the price of a full sort whenever ties straddle the
    boundary, which in bf16 is most large tensors.
    """
    if density >= 1:
        return delta
    flat_delta = delta.reshape(-1)
    keep = _trim(lambda index: flat_delta[index].float().abs(), flat_delta.numel(), density, argsort_ties)
    if keep is None:
        return torch.zeros_like(delta)
    return torch.where(
        torch.cat([keep.mask(flat_delta[sl].float().abs()) for sl in chunk_slices(flat_delta.numel())]),
        flat_delta,
        0,
    ).view_as(delta)


def _trim(
    magnitude: Callable[[Index], torch.Tensor], n: int, density: float, argsort_ties: bool, l1: bool = False
) -> TopK | None:
    """TIES's keep rule for one delta; None when nothing is kept (density <= 0, or an empty tensor)."""
    if density <= 0 or n == 0:
        return None
    k = max(1, int(density * n))
    keep = top_k(magnitude, n, k, l1)
    if argsort_ties and keep.ties < keep.n_equal:
        return _ArgsortTopK(magnitude, n, k, keep)
    return keep


class _ArgsortTopK(TopK):
    """mergekit's choice among tied entries: the first k of a full descending argsort (slow; for parity)."""

    def __init__(self, magnitude: Callable[[Index], torch.Tensor], n: int, k: int, rule: TopK):
        super().__init__(rule.threshold, rule.ties, rule.n_equal, rule.kept_l1, rule.l1)
        whole = torch.cat([magnitude(sl) for sl in chunk_slices(n)])
        self._keep = torch.zeros(n, dtype=torch.bool, device=whole.device)
        self._keep[torch.argsort(whole, descending=True)[:k]] = True
        self._at = 0

    def mask(self, magnitude: torch.Tensor) -> torch.Tensor:
        keep = self._keep[self._at : self._at + magnitude.numel()]
        self._at += magnitude.numel()
        return keep


def _seed(seed: int, tensor: str, model: int) -> int:
    """A per-(tensor, model) seed, so a DARE mask depends on neither tensor order nor threads."""
    digest = hashlib.sha256(f"{seed}:{tensor}:{model}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _drop_mask(seed: int, density: float, sl: slice, device: torch.device) -> torch.Tensor:
    """DARE's Bernoulli(density) keep mask for one chunk, from a generator seeded per (seed, chunk): the mask
    of an entry depends on its position only, not on how many chunks the caller asks for at once."""
    generator = torch.Generator(device=device).manual_seed(seed ^ (sl.start // chunks.CHUNK))
    return torch.rand(sl.stop - sl.start, generator=generator, device=device) < density


def drop_random(delta: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """DARE "drop": keep each entry with probability `density` (a Bernoulli mask from a seeded generator)."""
    if density >= 1:
        return delta
    flat_delta = delta.reshape(-1)
    mask = torch.cat([_drop_mask(seed, density, sl, delta.device) for sl in chunk_slices(flat_delta.numel())])
    return torch.where(mask, flat_delta, 0).view_as(delta)


def rescale_l1(delta: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """kept * |delta|_1 / |kept|_1, leaving `kept` alone when either norm is < 1e-7 (mergekit's `rescale`)."""
    factor = _rescale_factor(float(delta.abs().sum()), float(kept.abs().sum()))
    return kept if factor is None else kept * factor


def _rescale_factor(before: float, after: float) -> float | None:
    return None if before < RESCALE_EPS or after < RESCALE_EPS else before / after


@dataclass
class _Sparsified:
    """One task vector's sparsification: which entries stay (`mask` per chunk) and the `rescale` factor."""

    mask: Callable[[slice, torch.Tensor], torch.Tensor] | None  # (chunk, delta chunk) -> keep; None keeps all
    factor: float | None = None  # the L1 rescale factor, None when not rescaling


def _sparsify(
    settings: TaskVectorSettings,
    delta: Callable[[Index], torch.Tensor],
    n: int,
    density: float,
    rescale: bool,
    seed: int | None,
    argsort_ties: bool,
) -> _Sparsified:
    if settings.sparsify == "none" or density >= 1:
        return _Sparsified(mask=None)
    if settings.sparsify == "magnitude":
        keep = _trim(lambda index: delta(index).abs(), n, density, argsort_ties, l1=rescale)
        if keep is None:
            return _Sparsified(mask=lambda sl, d: torch.zeros_like(d, dtype=torch.bool))
        factor = _rescale_factor(keep.l1, keep.kept_l1) if rescale else None
        return _Sparsified(mask=lambda sl, d: keep.mask(d.abs()), factor=factor)
    assert seed is not None, "DARE needs a seed per model"

    def drop(sl: slice, d: torch.Tensor) -> torch.Tensor:
        return _drop_mask(seed, density, sl, d.device)

    factor = None
    if rescale:
        before = after = 0.0
        for sl in chunk_slices(n):
            magnitude = delta(sl).abs()
            before += float(magnitude.sum(dtype=torch.float64))
            after += float(magnitude[drop(sl, magnitude)].sum(dtype=torch.float64))
        factor = _rescale_factor(before, after)
    return _Sparsified(mask=drop, factor=factor)


def task_vector_merge(
    theta_base: torch.Tensor,
    thetas: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    settings: TaskVectorSettings,
    normalize: bool = True,
    *,
    rescale: bool = False,
    lambda_: float = 1.0,
    seeds: Sequence[int] | None = None,
    argsort_ties: bool = False,
    out_dtype: torch.dtype = torch.float32,
    sink: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor | None:
    """theta = theta_base + lambda * merged task vector, math in fp32 chunk by chunk (`chunks.py`), written in
    `out_dtype`. `seeds[t]` drives model t's DARE mask. Inputs may be in any float dtype."""
    theta_base, *thetas = widen_small([theta_base, *thetas])
    base, others = theta_base.reshape(-1), flat(thetas)
    n = base.numel()

    def delta_of(t: int) -> Callable[[Index], torch.Tensor]:
        return lambda index: others[t][index].float() - base[index].float()

    sparse = [
        _sparsify(settings, delta_of(t), n, density_t, rescale, seeds[t] if seeds else None, argsort_ties)
        for t, density_t in enumerate(densities)
    ]
    total = float(sum(weights))

    def merge_chunk(sl: slice, chunk: list[torch.Tensor]) -> torch.Tensor:
        # Written for speed on CPU: masks multiply (a bool `where` is 3x slower) and the elected sign is a
        # +-1 tensor, so "sign(x) == gamma" is "x * gamma > 0". Results equal the textbook form bit for bit.
        theta_base_c = chunk[0]
        weighted: list[torch.Tensor] = []
        for theta_t, w_t, s in zip(chunk[1:], weights, sparse, strict=True):
            delta_t = theta_t - theta_base_c
            if s.mask is not None:
                delta_t *= s.mask(sl, delta_t)
                if s.factor is not None:
                    delta_t *= s.factor
            weighted.append(delta_t * w_t)
        summed = functools.reduce(torch.add, weighted)
        if settings.sign_consensus:
            # Elect: gamma = sign(sum_t w_t delta_t), 0 counted as + (when the sum is -0.0 every delta is 0,
            # none agrees whatever gamma is, so copysign's -1 there changes nothing).
            gamma = torch.copysign(torch.ones_like(summed), summed)
            merged = torch.zeros_like(theta_base_c)
            divisor = torch.zeros_like(theta_base_c)
            # Disjoint merge: only entries whose sign agrees with gamma (zeros never agree).
            for wd_t, w_t in zip(weighted, weights, strict=True):
                agree = (wd_t * gamma > 0).float()
                merged += wd_t * agree
                divisor += w_t * agree
            divisor += divisor == 0  # nobody agrees: divide by 1
        else:
            merged = summed
            divisor = torch.full_like(merged, total if abs(total) >= 1e-8 else 1.0)
        if normalize:
            merged = merged / divisor
        if lambda_ != 1:
            merged = merged * lambda_
        return theta_base_c + merged

    # elementwise, so block by block; DARE's drop mask is drawn per whole chunk, so it keeps whole chunks
    block = None if settings.sparsify == "random" else chunks.BLOCK
    return map_chunks([theta_base, *thetas], merge_chunk, out_dtype, sink, block)


def task_vector_params(normalize: bool, rescale: bool, seeded: bool = False) -> dict[str, ParamSpec]:
    """The global parameters of every task-vector method, with the method's own defaults (as in mergekit)."""
    params = {
        "normalize": ParamSpec(
            kind="bool", default=normalize, help="divide by the sum of the (agreeing) weights"
        ),
        "rescale": ParamSpec(kind="bool", default=rescale, help="keep each sparsified delta's L1 norm"),
        "lambda": ParamSpec(default=1.0, help="scale of the merged task vector"),
        "int8_mask": ParamSpec(kind="bool", default=False, ignored=True, help="mergekit memory option"),
    }
    if seeded:
        params["seed"] = ParamSpec(default=0.0, low=0, help="seed of the random drop (per tensor and model)")
    return params


TASK_VECTOR_MODEL_PARAMS = {
    "weight": ParamSpec(help="weight of this model's task vector"),
    "density": ParamSpec(default=1.0, low=0.0, high=1.0, help="fraction of the task vector kept"),
}


def base_passthrough(p: TensorParams) -> int | None:
    """The base itself when no task vector can contribute: lambda = 0, or every weight or density is 0."""
    others = [mp for i, mp in enumerate(p.model_params) if i != p.base]
    if p.params["lambda"] == 0 or all(mp["weight"] == 0 or mp["density"] == 0 for mp in others):
        return p.base
    return None


def apply_settings(
    thetas: Sequence[torch.Tensor], p: TensorParams, settings: TaskVectorSettings
) -> torch.Tensor | None:
    """Run `task_vector_merge` with a tensor's resolved parameters; the base_model gets no weight."""
    assert p.base is not None
    others = [i for i in range(len(thetas)) if i != p.base]
    seed = int(p.params.get("seed", 0))
    return task_vector_merge(
        thetas[p.base],
        [thetas[i] for i in others],
        weights=[float(p.model_params[i]["weight"]) for i in others],
        densities=[float(p.model_params[i]["density"]) for i in others],
        settings=settings,
        normalize=bool(p.params["normalize"]),
        rescale=bool(p.params["rescale"]),
        lambda_=float(p.params["lambda"]),
        seeds=[_seed(seed, p.tensor, i) for i in others],
        argsort_ties=bool(p.params.get("argsort_ties", False)),
        out_dtype=p.out_dtype,
        sink=p.sink,
    )
