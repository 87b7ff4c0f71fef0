"""TIES-Merging: trim, elect sign, disjoint merge of task vectors.

Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023, Algorithm 1:

    tau_t = theta_t - theta_init                                   (task vectors)
    hat_tau_t = keep_topk_reset_rest_to_zero(tau_t, k)             (step 1: trim)
    gamma_m = sgn(sum_t hat_tau_t)                                 (step 2: elect)
    A^p = {t : sgn(hat_tau_t^p) = gamma_m^p}
    tau_m^p = 1/|A^p| sum_{t in A^p} hat_tau_t^p                   (step 3: disjoint merge)
    theta_m = theta_init + lambda tau_m

With per-model weights w_t as in mergekit: the elected sign is sgn(sum_t w_t hat_tau_t) and, with
`normalize`, the disjoint mean divides by sum_{t in A^p} w_t instead of |A^p|. lambda is 1 here.
k = int(density * numel) per tensor; density 1 keeps everything. With one model, density 1 and
normalize false this is task arithmetic, theta_init + w tau.

YAML: per model `weight` (required) and `density` (default 1); global `normalize` (default true) and
`int8_mask` (accepted, no effect: masks are not stored). The base_model gets no weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from branchmerge.merge.methods.contract import MergeMethod, ParamSpec, TensorParams
from branchmerge.merge.methods.task_vector import TaskVectorSettings, task_vector_merge

TIES = TaskVectorSettings(sparsify="magnitude", sign_consensus=True)


def _apply(thetas: Sequence[torch.Tensor], p: TensorParams) -> torch.Tensor:
    assert p.base is not None
    others = [i for i in range(len(thetas)) if i != p.base]
    return task_vector_merge(
        thetas[p.base],
        [thetas[i] for i in others],
        weights=[float(p.model_params[i]["weight"]) for i in others],
        densities=[float(p.model_params[i]["density"]) for i in others],
        settings=TIES,
        normalize=bool(p.params["normalize"]),
    )


METHOD = MergeMethod(
    name="ties",
    apply=_apply,
    params={
        "normalize": ParamSpec(kind="bool", default=True, help="divide by the weights that agree in sign"),
        "int8_mask": ParamSpec(kind="bool", default=False, ignored=True, help="mergekit memory option"),
    },
    model_params={
        "weight": ParamSpec(help="weight of this model's task vector"),
        "density": ParamSpec(default=1.0, low=0.0, high=1.0, help="fraction of the task vector kept"),
    },
    needs_base=True,
    summary="TIES: trim task vectors by magnitude, elect signs, average the agreeing entries",
)
