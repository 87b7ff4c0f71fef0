"""The one task-vector merge that task arithmetic, TIES and DARE are settings of.

Every such method works on task vectors delta_t = theta_t - theta_base and differs only in
  - how each delta is sparsified: not at all (task arithmetic), keep the top-k by magnitude (TIES's "trim"),
    or drop entries at random (DARE), optionally rescaled so the L1 norm is unchanged;
  - whether entries are combined only where they agree with an elected sign (TIES's "elect" + "disjoint merge").
So a method file picks a `TaskVectorSettings` and this module does the rest (STYLE.md, practice 15).

Conventions follow mergekit 0.1.5's generalized task arithmetic (DESIGN.md):
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

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from branchmerge.merge.methods.contract import ParamSpec, TensorParams

RESCALE_EPS = 1e-7


@dataclass(frozen=True)
class TaskVectorSettings:
    sparsify: Literal["none", "magnitude", "random"]
    sign_consensus: bool


def keep_top_magnitude(delta: torch.Tensor, density: float, argsort_ties: bool = False) -> torch.Tensor:
    """Zero all but the k = max(1, int(density * numel)) entries of largest |delta| (TIES "trim").

    The k-th largest magnitude is found with `kthvalue` (linear time, not a sort). Entries tied with it at the
    boundary are kept in index order, which is deterministic on any device. mergekit instead takes the first k
    of `torch.argsort(descending=True)`, whose order among equal values is the sort's own; `argsort_ties`
    reproduces that (bit parity with mergekit on CPU) at the price of a full sort whenever ties straddle the
    boundary, which in bf16 is most large tensors.
    """
    if density >= 1:
        return delta
    n = delta.numel()
    if density <= 0 or n == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * n))
    flat = delta.flatten()
    magnitude = flat.abs()
    threshold = magnitude.kthvalue(n - k + 1).values  # the k-th largest |delta|
    keep = magnitude > threshold
    n_tied_needed = k - int(keep.sum())
    tied = magnitude == threshold
    if n_tied_needed < int(tied.sum()):  # ties straddle the boundary: choose which of them stay
        if argsort_ties:
            keep = torch.zeros_like(keep)
            keep[torch.argsort(magnitude, descending=True)[:k]] = True
        else:
            keep[tied.nonzero().flatten()[:n_tied_needed]] = True
    else:
        keep |= tied
    return torch.where(keep, flat, torch.zeros_like(flat)).view_as(delta)


def _seed(seed: int, tensor: str, model: int) -> int:
    """A per-(tensor, model) seed, so a DARE mask depends on neither tensor order nor threads."""
    digest = hashlib.sha256(f"{seed}:{tensor}:{model}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def drop_random(delta: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """DARE "drop": keep each entry with probability `density` (a Bernoulli mask from a seeded generator)."""
    if density >= 1:
        return delta
    generator = torch.Generator(device=delta.device).manual_seed(seed)
    mask = torch.rand(delta.shape, generator=generator, device=delta.device) < density
    return torch.where(mask, delta, torch.zeros_like(delta))


def rescale_l1(delta: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """kept * |delta|_1 / |kept|_1, leaving `kept` alone when either norm is < 1e-7 (mergekit's `rescale`)."""
    before = float(delta.abs().sum())
    after = float(kept.abs().sum())
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return kept
    return kept * (before / after)


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
) -> torch.Tensor:
    """theta = theta_base + lambda * merged task vector, all in fp32. `seeds[t]` drives model t's DARE mask."""
    theta_base = theta_base.float()
    weighted: list[torch.Tensor] = []
    for t, (theta_t, w_t, density_t) in enumerate(zip(thetas, weights, densities, strict=True)):
        delta_t = theta_t.float() - theta_base
        if settings.sparsify != "none" and density_t < 1:
            if settings.sparsify == "magnitude":
                kept = keep_top_magnitude(delta_t, density_t, argsort_ties)
            else:
                assert seeds is not None, "DARE needs a seed per model"
                kept = drop_random(delta_t, density_t, seeds[t])
            delta_t = rescale_l1(delta_t, kept) if rescale else kept
        weighted.append(delta_t * w_t)

    if settings.sign_consensus:
        # Elect: gamma = sign(sum_t w_t delta_t), 0 counted as +.
        gamma = torch.where(torch.stack(weighted).sum(dim=0) >= 0, 1.0, -1.0)
        merged = torch.zeros_like(weighted[0])
        divisor = torch.zeros_like(weighted[0])
        # Disjoint merge: only entries whose sign agrees with gamma (zeros never agree).
        for wd_t, w_t in zip(weighted, weights, strict=True):
            agree = (torch.sign(wd_t) == gamma).float()
            merged += wd_t * agree
            divisor += w_t * agree
        divisor[divisor == 0] = 1
    else:
        merged = torch.stack(weighted).sum(dim=0)
        total = float(sum(weights))
        divisor = torch.full_like(merged, total if abs(total) >= 1e-8 else 1.0)

    if normalize:
        merged = merged / divisor
    if lambda_ != 1:
        merged = merged * lambda_
    return theta_base + merged


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
) -> torch.Tensor:
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
    )
