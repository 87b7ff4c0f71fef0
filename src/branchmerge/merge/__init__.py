"""Model merging: a streaming engine over safetensors, one file per method, mergekit-style YAML configs.

    from branchmerge.merge import run_merge
    run_merge("merge.yaml", "out/merged")   # or a dict / MergeConfig

Methods: see `METHODS` (linear, slerp, ties, arcee_fusion).
"""

from branchmerge.merge.config import MergeConfig, load_merge_config
from branchmerge.merge.engine import MergeResult, run_merge
from branchmerge.merge.methods import METHODS

__all__ = ["METHODS", "MergeConfig", "MergeResult", "load_merge_config", "run_merge"]
