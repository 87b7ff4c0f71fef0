"""Task arithmetic: add weighted task vectors to the base model.

Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, Sec. 2:

    tau_t = theta_t - theta_pre                              (task vector)
    theta_new = theta_pre + lambda * sum_t w_t tau_t         (addition; the paper's weights are all 1)

mergekit's `task_arithmetic` (normalize false by default; with normalize the sum is divided by sum_t w_t).

YAML: per model `weight` (required) and `density` (default 1, unused: no sparsification); global `normalize`
(default false), `lambda` (default 1), `rescale` and `int8_mask` (accepted, no effect here).
The base_model gets no weight.
"""

from __future__ import annotations

from branchmerge.merge.methods.contract import MergeMethod
from branchmerge.merge.methods.task_vector import (
    TASK_VECTOR_MODEL_PARAMS,
    TaskVectorSettings,
    apply_settings,
    base_passthrough,
    task_vector_params,
)

TASK_ARITHMETIC = TaskVectorSettings(sparsify="none", sign_consensus=False)

METHOD = MergeMethod(
    name="task_arithmetic",
    apply=lambda thetas, p: apply_settings(thetas, p, TASK_ARITHMETIC),
    params=task_vector_params(normalize=False, rescale=False),
    model_params=TASK_VECTOR_MODEL_PARAMS,
    needs_base=True,
    passthrough=base_passthrough,
    streams=True,
    summary="base + lambda * sum of weighted task vectors",
)
