"""RegMean: the merge of each linear layer that best reproduces every expert's outputs on its own inputs.

Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR 2023 (equations numbered
here, not as in the paper). For a linear layer y = x W (W: d_in x d_out, the transpose of torch's
`nn.Linear.weight`) and expert i's inputs X_i (tokens x d_in), minimising sum_i ||X_i W - X_i W_i||^2 gives

    W* = (sum_i G_i)^-1 sum_i G_i W_i,      G_i = X_i^T X_i                                  (1)

and, to keep the sum invertible and the merge from over-fitting the calibration inputs, the paper shrinks the
off-diagonal entries of every Gram matrix by alpha in [0, 1]:

    G_i <- alpha G_i + (1 - alpha) diag(G_i)                                                 (2)

alpha = 1 is (1) exactly; alpha = 0 keeps only the diagonal, a per-input-feature weighted average. With
per-model weights lambda_i (default 1) each G_i is scaled by lambda_i.

Here G_i is the *mean* X_i^T X_i per calibration token (`calibration.py`), so an expert whose examples are
longer does not weigh more; with equal token counts that is (1)'s G_i up to a common factor, which cancels.

An input feature that no calibration token activates (a zero row and column in every G_i) gets the weighted
average of its weights. Only nn.Linear weights have a Gram matrix: every other tensor (embeddings, norms,
biases, a tied lm_head) falls back to the plain weighted average sum_i lambda_i theta_i / sum_i lambda_i, as in
the paper.

Sequential variant (RegMean++, Nguyen et al. 2025, arXiv 2508.03121): with `sequential: true` the G_i of layer
l come from expert i's examples run through the *merged* layers before l rather than through expert i alone, so
each layer's regression sees the inputs it will get in the merged model (`calibration_sequential.py`). The
formula above is unchanged; only the statistics differ, and they are computed afresh for every merge.

YAML: global `alpha` (default 0.9; the paper tunes it per task), global `sequential` (default false; one value
for the whole merge), per-model `weight` (default 1). Every model needs a `calibration:` source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch

from branchmerge.merge.methods.contract import MergeMethod, ParamSpec, TensorParams
from branchmerge.merge.methods.linear import linear


def reduce_off_diagonal(G: torch.Tensor, alpha: float) -> torch.Tensor:
    """(2): alpha G + (1 - alpha) diag(G)."""
    return alpha * G + (1 - alpha) * torch.diag(torch.diagonal(G))


def regmean(
    weights: Sequence[torch.Tensor],
    grams: Sequence[torch.Tensor],
    alpha: float = 0.9,
    lambdas: Sequence[float] | None = None,
) -> torch.Tensor:
    """(1) with (2), for torch `nn.Linear` weights (d_out x d_in) and the Gram matrices (d_in x d_in)
    of their inputs. Solved in float64, returned in fp32."""
    lambdas = lambdas if lambdas is not None else [1.0] * len(weights)
    # An input feature no calibration token activates has a zero row and column in every G_i, so (1) says
    # nothing about its weights: a 1 on its diagonal decouples it and gives it the weighted average instead.
    unused = torch.stack([torch.diagonal(G_i) for G_i in grams]).sum(0) == 0
    G_sum = torch.zeros_like(grams[0], dtype=torch.float64)
    GW_sum = torch.zeros(weights[0].shape[1], weights[0].shape[0], dtype=torch.float64)  # d_in x d_out
    for W_i, G_i, lambda_i in zip(weights, grams, lambdas, strict=True):
        G_i = reduce_off_diagonal(G_i.double(), alpha) + torch.diag(unused.double())
        G_i = lambda_i * G_i
        G_sum += G_i
        GW_sum += G_i @ W_i.double().T  # the paper's W_i is torch's weight transposed
    W_star, info = torch.linalg.solve_ex(G_sum, GW_sum)
    if int(info) != 0:  # inputs that are exactly linearly dependent: the least-squares solution
        W_star = torch.linalg.lstsq(G_sum, GW_sum).solution
    return W_star.T.float()


def _apply(thetas: Sequence[torch.Tensor], p: TensorParams) -> torch.Tensor:
    lambdas = [float(mp["weight"]) for mp in p.model_params]
    if p.stats is None:  # not an nn.Linear weight: the plain weighted average
        return cast(torch.Tensor, linear(thetas, lambdas))
    return regmean(thetas, p.stats, float(p.params["alpha"]), lambdas)


def _check(p: TensorParams) -> str | None:
    if sum(float(mp["weight"]) for mp in p.model_params) <= 0:
        return "the weights must sum to more than 0"
    return None


METHOD = MergeMethod(
    name="regmean",
    apply=_apply,
    params={
        "alpha": ParamSpec(
            default=0.9, low=0.0, high=1.0, help="scale of the Gram matrices' off-diagonal entries (2)"
        ),
        "sequential": ParamSpec(
            kind="bool",
            default=False,
            help="RegMean++: take layer l's Gram matrices from the merged layers before it",
        ),
    },
    model_params={"weight": ParamSpec(default=1.0, low=0.0, help="this model's weight lambda_i")},
    check=_check,
    calibration="gram",
    summary="per linear layer, the weights that best reproduce every expert's outputs on its own inputs",
)
