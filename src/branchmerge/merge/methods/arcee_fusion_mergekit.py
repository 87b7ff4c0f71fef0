"""Arcee Fusion as mergekit 0.1.5 implements it (`arcee_fusion` there), for users who need parity with it.

It differs from the TinyR1 paper's formula (our `arcee_fusion`, see `arcee_fusion.py`) in five ways, all taken
from mergekit's source: the softmax runs along the last dim (per row of a matrix), the KL is per row and
KL(right || left), the importance uses |theta_R - theta_L|, lambda is fixed at 1.5, and the threshold uses
`>=`. With theta_L = base_model and theta_R = the other model, per tensor:

    p = softmax_row(theta_R) + 1e-8,  q = softmax_row(theta_L) + 1e-8
    KL_row = sum_j p_j log(p_j / q_j)                      (one value per row)
    S = |theta_R - theta_L| * KL_row                       (per coordinate)
    Q_a = sorted(S)[floor(a * (n - 1))]                    (no interpolation between order statistics)
    S_THR = Q_0.5 + 1.5 * (Q_0.75 - Q_0.25)
    theta = theta_L + (theta_R - theta_L) * [S >= S_THR]

Quantiles here use `kthvalue` at the same order statistic. mergekit computes them on a random sample of 1M
entries (with replacement) when a tensor has more, so above that size its output is not reproducible and no
implementation can match it bit for bit; below it this file gives mergekit's answer. The arithmetic is fp32
(mergekit's is the working dtype).

YAML: no parameters. Two models, one of them the base_model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from branchmerge.merge.methods.contract import MergeMethod, TensorParams

SOFTMAX_EPS = 1e-8
FENCE = 1.5


def order_statistic(x: torch.Tensor, q: float) -> torch.Tensor:
    """sorted(x)[floor(q * (n - 1))] without sorting."""
    flat = x.flatten()
    return flat.kthvalue(math.floor(q * (flat.numel() - 1)) + 1).values


def arcee_fusion_mergekit(theta_l: torch.Tensor, theta_r: torch.Tensor) -> torch.Tensor:
    theta_l, theta_r = theta_l.float(), theta_r.float()
    p = torch.softmax(theta_r, dim=-1) + SOFTMAX_EPS
    q = torch.softmax(theta_l, dim=-1) + SOFTMAX_EPS
    kl = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    del p, q
    s = (theta_r - theta_l).abs() * kl
    q1, median, q3 = (order_statistic(s, a) for a in (0.25, 0.5, 0.75))
    s_thr = median + FENCE * (q3 - q1)
    return torch.where(s >= s_thr, theta_r, theta_l)


def _apply(thetas: Sequence[torch.Tensor], p: TensorParams) -> torch.Tensor:
    assert p.base is not None
    return arcee_fusion_mergekit(thetas[p.base], thetas[1 - p.base])


METHOD = MergeMethod(
    name="arcee_fusion_mergekit",
    apply=_apply,
    needs_base=True,
    n_inputs=2,
    summary="mergekit's arcee_fusion (row-wise KL, |delta|, fixed fence) for parity with mergekit",
)
