"""The one task-vector merge that TIES, task arithmetic and (later) DARE are settings of.

Every such method works on task vectors delta_t = theta_t - theta_base and differs only in
  - how each delta is sparsified (none; keep the top-k by magnitude = TIES's "trim"; random drop = DARE), and
  - whether entries are combined only where they agree with an elected sign (TIES's "elect" + "disjoint merge").
So a method file picks a `TaskVectorSettings` and this module does the rest (STYLE.md, practice 15).

Conventions follow mergekit 0.1.5 (DESIGN.md): the sign is elected from the weighted, sparsified deltas
(sign(sum_t w_t delta_t), ties broken to +1); with `normalize` the divisor is sum w_t over the entries that
agree with the elected sign (1 where none agrees).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class TaskVectorSettings:
    sparsify: Literal["none", "magnitude"]
    sign_consensus: bool


def keep_top_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the k = int(density * numel) entries of largest |delta| (TIES "trim").

    Uses `topk` on whichever side is smaller (the kept k or the dropped numel - k), never a full sort.
    k = 0 keeps nothing (mergekit raises instead).
    """
    if density >= 1:
        return delta
    flat = delta.flatten()
    n = flat.numel()
    k = int(density * n)
    if k <= 0:
        return torch.zeros_like(delta)
    magnitude = flat.abs()
    if k <= n - k:
        keep = magnitude.topk(k, sorted=False).indices
        out = torch.zeros_like(flat)
        out[keep] = flat[keep]
    else:
        drop = magnitude.topk(n - k, largest=False, sorted=False).indices
        out = flat.clone()
        out[drop] = 0
    return out.view_as(delta)


def task_vector_merge(
    theta_base: torch.Tensor,
    thetas: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    settings: TaskVectorSettings,
    normalize: bool = True,
) -> torch.Tensor:
    """theta = theta_base + merged task vector, all in fp32."""
    weighted: list[torch.Tensor] = []
    for theta_t, w_t, density_t in zip(thetas, weights, densities, strict=True):
        delta_t = theta_t.float() - theta_base.float()
        if settings.sparsify == "magnitude":
            delta_t = keep_top_magnitude(delta_t, density_t)
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
    return theta_base.float() + merged
