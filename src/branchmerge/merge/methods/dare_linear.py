"""DARE with a plain weighted sum: drop task-vector entries at random, rescale, add to the base.

Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch",
ICML 2024, Eq. (1)-(2), then task arithmetic (Ilharco et al., ICLR 2023):

    m_t ~ Bernoulli(p),  hat_delta_t = rescale(m_t * delta_t)
    theta = theta_base + lambda * sum_t w_t hat_delta_t          (/ sum_t w_t with normalize)

The rescale matches L1 norms as mergekit does (1 / p in expectation); masks are seeded per (seed, tensor,
model), see `dare_ties.py`.

YAML: per model `weight` (required) and `density` (default 1); global `normalize` (default false), `rescale`
(default true), `lambda` (default 1), `seed` (default 0), `int8_mask` (accepted, no effect).
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

DARE_LINEAR = TaskVectorSettings(sparsify="random", sign_consensus=False)

METHOD = MergeMethod(
    name="dare_linear",
    apply=lambda thetas, p: apply_settings(thetas, p, DARE_LINEAR),
    params=task_vector_params(normalize=False, rescale=True, seeded=True),
    model_params=TASK_VECTOR_MODEL_PARAMS,
    needs_base=True,
    passthrough=base_passthrough,
    streams=True,
    summary="DARE random drop + rescale, then a weighted sum of task vectors",
)
