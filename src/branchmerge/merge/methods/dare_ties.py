"""DARE-TIES: drop task-vector entries at random and rescale, then TIES's sign election and disjoint merge.

Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch",
ICML 2024, Eq. (1)-(2) (DARE):

    m_t ~ Bernoulli(p)              (p = density: the probability of *keeping* an entry)
    tilde_delta_t = m_t * delta_t
    hat_delta_t = tilde_delta_t / p                                    (paper's rescale)

followed by TIES (Yadav et al., NeurIPS 2023, Algorithm 1 steps 2-3) on the hat_delta_t. As in mergekit the
rescale matches L1 norms, hat_delta_t = tilde_delta_t * |delta_t|_1 / |tilde_delta_t|_1, which equals 1 / p in
expectation; `normalize` is off by default.

Reproducible: the mask of model t at tensor X is drawn from a generator seeded by (seed, X, t), so the output
depends only on the config, never on tensor order, threads or device count. (mergekit draws from the global
torch generator, so two of its runs differ.)

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

DARE_TIES = TaskVectorSettings(sparsify="random", sign_consensus=True)

METHOD = MergeMethod(
    name="dare_ties",
    apply=lambda thetas, p: apply_settings(thetas, p, DARE_TIES),
    params=task_vector_params(normalize=False, rescale=True, seeded=True),
    model_params=TASK_VECTOR_MODEL_PARAMS,
    needs_base=True,
    passthrough=base_passthrough,
    streams=True,
    summary="DARE random drop + rescale, then TIES sign election",
)
