"""Fisher-weighted averaging: each coordinate averaged with weights that say how much each expert relies on it.

Matena & Raffel, "Merging Models with Fisher-Weighted Averaging", NeurIPS 2022: the weighted average with the
diagonal Fisher as weights (equations numbered here, not as in the paper):

    theta*_j = sum_i lambda_i F_i,j theta_i,j / sum_i lambda_i F_i,j                               (1)
    F_i = (1/N) sum_n (grad_theta log p_theta_i(y_n | x_n))^2       (diagonal, elementwise square)  (2)

F_i is the empirical Fisher: the gradient of the log-likelihood of expert i's own calibration examples (the
assistant tokens given the prompt; `calibration.py`), squared per example and averaged. lambda_i are per-model
weights (default 1). A coordinate no example moves (an embedding row of a token never seen) has F = 0 for every
expert; each F_i,j is floored at `epsilon` first, so such coordinates get the plain
weighted average instead of 0 / 0.

Every parameter has a Fisher (embeddings and norms included); a stored tensor that is not a parameter of the
loaded model (none in Qwen3) would get the plain weighted average.
YAML: global `epsilon` (default 1e-6), per-model `weight` (default 1). Every model needs a `calibration:` source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch

from branchmerge.merge.methods.contract import MergeMethod, ParamSpec, TensorParams
from branchmerge.merge.methods.linear import linear


def fisher_merge(
    thetas: Sequence[torch.Tensor],
    fishers: Sequence[torch.Tensor],
    epsilon: float = 1e-6,
    lambdas: Sequence[float] | None = None,
) -> torch.Tensor:
    """(1) in fp32, with every F_i floored at epsilon."""
    lambdas = lambdas if lambdas is not None else [1.0] * len(thetas)
    num = torch.zeros_like(thetas[0], dtype=torch.float32)
    den = torch.zeros_like(num)
    for theta_i, F_i, lambda_i in zip(thetas, fishers, lambdas, strict=True):
        w_i = lambda_i * F_i.float().clamp_min(epsilon)
        num += w_i * theta_i.float()
        den += w_i
    return num / den


def _apply(thetas: Sequence[torch.Tensor], p: TensorParams) -> torch.Tensor:
    lambdas = [float(mp["weight"]) for mp in p.model_params]
    if p.stats is None:  # a tensor that is not a parameter of the loaded model (none in Qwen3)
        return cast(torch.Tensor, linear(thetas, lambdas))
    return fisher_merge(thetas, p.stats, float(p.params["epsilon"]), lambdas)


def _check(p: TensorParams) -> str | None:
    if sum(float(mp["weight"]) for mp in p.model_params) <= 0:
        return "the weights must sum to more than 0"
    return None


METHOD = MergeMethod(
    name="fisher",
    apply=_apply,
    params={
        "epsilon": ParamSpec(
            default=1e-6, low=1e-30, help="floor of every Fisher value, so unused coordinates are averaged"
        )
    },
    model_params={"weight": ParamSpec(default=1.0, low=0.0, help="this model's weight lambda_i")},
    check=_check,
    calibration="fisher",
    summary="per coordinate, the average weighted by each expert's diagonal Fisher on its own examples",
)
