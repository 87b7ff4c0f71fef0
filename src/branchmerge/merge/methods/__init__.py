"""The merge-method registry: one file per method, listed here by the name configs use.

Adding a method = one new file that defines `METHOD` + one line below + one test. No import side effects.
"""

from branchmerge.merge.methods import arcee_fusion, linear, slerp, ties
from branchmerge.merge.methods.contract import MergeMethod, ParamSpec, TensorParams

METHODS: dict[str, MergeMethod] = {
    "linear": linear.METHOD,
    "slerp": slerp.METHOD,
    "ties": ties.METHOD,
    "arcee_fusion": arcee_fusion.METHOD,
}

__all__ = ["METHODS", "MergeMethod", "ParamSpec", "TensorParams"]
