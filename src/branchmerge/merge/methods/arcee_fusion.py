"""Arcee Fusion as the TinyR1 paper writes it: update the left model only where the importance is an outlier.

Sun et al., "TinyR1-32B-Preview: Boosting Accuracy with Branch-Merge Distillation", arXiv:2503.04872, Merge
Phase (Arcee Fusion), eq. (1); README, "Arcee Fusion: which formula". Left = base_model (theta_L), right = the other model
(theta_R); per tensor, over the flattened weights:

    p = softmax(theta_L) + 1e-8,  q = softmax(theta_R) + 1e-8                  (1)
    KL = sum_i p_i log(p_i / q_i)            (one scalar per tensor)           (2)
    S = KL * (theta_L - theta_R)             (per coordinate)                  (3)
    S_THR = median(S) + lambda * IQR(S),     IQR = Q3 - Q1                     (4)
    theta = theta_L + (theta_R - theta_L) * [S > S_THR]                        (5)

Quantiles are exact (linear interpolation between order statistics, as `torch.quantile`) and computed with
`kthvalue`, which has no size limit, so the result is deterministic. Sequential merging of several experts,
((A & B) & C), is several two-model merges.

Sign convention, flagged for review: (3) is implemented literally as the paper prints it, S = KL (theta_L -
theta_R). Because KL is one non-negative scalar per tensor, it only rescales S: when KL > 0 the selected
coordinates are exactly those where theta_L - theta_R is an upper outlier, i.e. where the right model moved the
weight *down* the most; coordinates it moved up are never taken. The reverse sign (theta_R - theta_L) would take
only upward moves, and mergekit's `arcee_fusion` uses |theta_R - theta_L| (both directions) with a row-wise
softmax, a per-row KL(right || left), `>=`, lambda fixed at 1.5 and sampled quantiles. When KL = 0 (identical
distributions) S is all zero and nothing is taken.

The paper's prose ("the greater the difference, the stronger the preference for adopting the parameter from
the new model") describes a magnitude, not a signed delta; `magnitude: true` uses S = KL |theta_L - theta_R|,
which takes large moves in both directions. The default stays eq. (3) as printed.

YAML: global `lambda` (default 1.5, the Tukey fence; smaller values take more coordinates) and `magnitude`
(default false).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from branchmerge.merge.methods.contract import MergeMethod, ParamSpec, TensorParams

SOFTMAX_EPS = 1e-8


def exact_quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of all entries of x with linear interpolation (numpy's default), via `kthvalue`."""
    flat = x.flatten()
    pos = q * (flat.numel() - 1)
    lo = math.floor(pos)
    frac = pos - lo
    v_lo = flat.kthvalue(lo + 1).values
    if frac == 0:
        return v_lo
    v_hi = flat.kthvalue(lo + 2).values
    return v_lo + (v_hi - v_lo) * frac


def arcee_fusion(
    theta_l: torch.Tensor, theta_r: torch.Tensor, lambda_: float = 1.5, magnitude: bool = False
) -> torch.Tensor:
    """Eqs. (1)-(5) in fp32; `magnitude` replaces the signed delta of (3) by its absolute value."""
    theta_l, theta_r = theta_l.float(), theta_r.float()
    p = torch.softmax(theta_l.flatten(), dim=0) + SOFTMAX_EPS  # (1)
    q = torch.softmax(theta_r.flatten(), dim=0) + SOFTMAX_EPS
    kl = torch.sum(p * torch.log(p / q))  # (2)
    del p, q
    delta = theta_l - theta_r
    s = kl * (delta.abs() if magnitude else delta)  # (3)
    q1, median, q3 = (exact_quantile(s, v) for v in (0.25, 0.5, 0.75))
    s_thr = median + lambda_ * (q3 - q1)  # (4)
    # (5) as a selection: theta_L + (theta_R - theta_L) * 1 would round, the right weight itself does not.
    return torch.where(s > s_thr, theta_r, theta_l)


def _apply(thetas: Sequence[torch.Tensor], p: TensorParams) -> torch.Tensor:
    assert p.base is not None
    return arcee_fusion(
        thetas[p.base], thetas[1 - p.base], float(p.params["lambda"]), bool(p.params["magnitude"])
    )


METHOD = MergeMethod(
    name="arcee_fusion",
    apply=_apply,
    params={
        "lambda": ParamSpec(default=1.5, help="S_THR = median(S) + lambda * IQR(S)"),
        "magnitude": ParamSpec(
            kind="bool", default=False, help="S = KL * |theta_L - theta_R| (the paper's prose)"
        ),
    },
    needs_base=True,
    n_inputs=2,
    summary="TinyR1's Arcee Fusion: take the other model's weights where the importance is an outlier",
)
