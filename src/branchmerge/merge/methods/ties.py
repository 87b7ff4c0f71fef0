"""TIES-Merging: trim, elect sign, disjoint merge of task vectors.

Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023, Algorithm 1:

    tau_t = theta_t - theta_init                                   (task vectors)
    hat_tau_t = keep_topk_reset_rest_to_zero(tau_t, k)             (step 1: trim)
    gamma_m = sgn(sum_t hat_tau_t)                                 (step 2: elect)
    A^p = {t : sgn(hat_tau_t^p) = gamma_m^p}
    tau_m^p = 1/|A^p| sum_{t in A^p} hat_tau_t^p                   (step 3: disjoint merge)
    theta_m = theta_init + lambda tau_m

With per-model weights w_t as in mergekit: the elected sign is sgn(sum_t w_t hat_tau_t) and, with
`normalize`, the disjoint mean divides by sum_{t in A^p} w_t instead of |A^p|.
k = int(density * numel) per tensor; density 1 keeps everything. With one model, density 1 and
normalize false this is task arithmetic, theta_init + w tau. lambda scales tau_m as in the paper.

YAML: per model `weight` (required) and `density` (default 1); global `normalize` (default true), `rescale`
(default false), `lambda` (default 1), `argsort_ties` (default false: see `keep_top_magnitude`) and `int8_mask`
(accepted, no effect: masks are not stored). The base_model gets no weight.
"""

from __future__ import annotations

from branchmerge.merge.methods.contract import MergeMethod, ParamSpec
from branchmerge.merge.methods.task_vector import (
    TASK_VECTOR_MODEL_PARAMS,
    TaskVectorSettings,
    apply_settings,
    base_passthrough,
    task_vector_params,
)

TIES = TaskVectorSettings(sparsify="magnitude", sign_consensus=True)

METHOD = MergeMethod(
    name="ties",
    apply=lambda thetas, p: apply_settings(thetas, p, TIES),
    params={
        **task_vector_params(normalize=True, rescale=False),
        "argsort_ties": ParamSpec(
            kind="bool", default=False, help="break trim ties as mergekit's argsort does (bit parity, slower)"
        ),
    },
    model_params=TASK_VECTOR_MODEL_PARAMS,
    needs_base=True,
    passthrough=base_passthrough,
    streams=True,
    summary="TIES: trim task vectors by magnitude, elect signs, average the agreeing entries",
)
