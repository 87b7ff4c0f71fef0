"""Model Stock: move from the base towards the average of the fine-tuned models by an angle-derived ratio.

Jang et al., "Model Stock: All We Need Is Just a Few Fine-tuned Models", ECCV 2024, Eq. (5)-(6):

    cos(theta) = mean over pairs (i < j) of <w_i - w_0, w_j - w_0> / (|w_i - w_0| |w_j - w_0|)
    t = N cos(theta) / (1 + (N - 1) cos(theta))                                         (5)
    w_H = t * (1/N) sum_i w_i + (1 - t) * w_0                                            (6)

w_0 is the base_model (the pre-trained anchor), w_1..w_N (N >= 2) the fine-tuned models. As in mergekit: each
norm product is clamped below at 1e-6, each pair's cosine to [-1, 1], and where 1 + (N - 1) cos(theta) is within
1e-6 of 0 the base is kept (t = 0). With `filter_wise` the angle and t are computed per row (per output filter)
of a matrix instead of once for the whole tensor.

YAML: global `filter_wise` (default false). Per-model parameters: none. Needs a base_model and two or more models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from branchmerge.merge.methods.contract import MergeMethod, ParamSpec, TensorParams

NORM_EPS = 1e-6
SINGULAR_EPS = 1e-6


def model_stock(w_0: torch.Tensor, ws: Sequence[torch.Tensor], filter_wise: bool = False) -> torch.Tensor:
    """Eqs. (5)-(6) in fp32; reductions run over the whole tensor, or over the last dim when `filter_wise`."""
    shape = w_0.shape
    w_0 = w_0.float()
    ws = [w.float() for w in ws]
    if filter_wise:
        if w_0.dim() == 1:  # a vector is one filter
            w_0, ws = w_0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w_0, ws = w_0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w_0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=NORM_EPS)).clamp(-1, 1))
    cos_theta = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos_theta
    singular = denominator.abs() < SINGULAR_EPS
    t = torch.where(singular, 0.0, n * cos_theta / torch.where(singular, 1.0, denominator))  # (5)
    average = torch.stack(ws).sum(dim=0) / n
    return (t * average + (1 - t) * w_0).reshape(shape)  # (6)


def _apply(thetas: Sequence[torch.Tensor], p: TensorParams) -> torch.Tensor:
    assert p.base is not None
    others = [thetas[i] for i in range(len(thetas)) if i != p.base]
    return model_stock(thetas[p.base], others, bool(p.params["filter_wise"]))


METHOD = MergeMethod(
    name="model_stock",
    apply=_apply,
    params={
        "filter_wise": ParamSpec(kind="bool", default=False, help="one ratio per row instead of per tensor")
    },
    needs_base=True,
    min_inputs=3,
    summary="Model Stock: interpolate base -> average of the models by the angle between their updates",
)
