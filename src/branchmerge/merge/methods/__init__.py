"""The merge-method registry: one file per method, listed here by the name configs use.

Adding a method = one new file that defines `METHOD` + one line below + one test. No import side effects.
"""

from branchmerge.merge.methods import (
    arcee_fusion,
    arcee_fusion_mergekit,
    dare_linear,
    dare_ties,
    fisher,
    linear,
    model_stock,
    regmean,
    slerp,
    task_arithmetic,
    ties,
)
from branchmerge.merge.methods.contract import MergeMethod, ParamSpec, TensorParams

METHODS: dict[str, MergeMethod] = {
    "linear": linear.METHOD,
    "slerp": slerp.METHOD,
    "task_arithmetic": task_arithmetic.METHOD,
    "ties": ties.METHOD,
    "dare_ties": dare_ties.METHOD,
    "dare_linear": dare_linear.METHOD,
    "model_stock": model_stock.METHOD,
    "arcee_fusion": arcee_fusion.METHOD,
    "arcee_fusion_mergekit": arcee_fusion_mergekit.METHOD,
    "regmean": regmean.METHOD,
    "fisher": fisher.METHOD,
}

__all__ = ["METHODS", "MergeMethod", "ParamSpec", "TensorParams"]
