"""Evaluation: run models on benchmark items, grade with the shared graders, compute statistics, write reports.

The API a script needs: `load_mdr` / `load_set` for the problems, `evaluate_model` to sample and grade a model,
the statistics of `evaluate.stats` on its EvalSamples, and `render_report` for report.md and report.html; with
`ModelInfo` descriptors, `build_claim` states the Branch-Merge claim and `Results` is the schema of results.json.
"""

from branchmerge.evaluate.claim import Claim, build_claim
from branchmerge.evaluate.claim_models import ModelInfo, load_models
from branchmerge.evaluate.grading import outputs_path, truncation_rate
from branchmerge.evaluate.loaders import load_set
from branchmerge.evaluate.mdr import load_mdr
from branchmerge.evaluate.report import render_report
from branchmerge.evaluate.results import Results, read_results
from branchmerge.evaluate.runner import evaluate_model, judge_cache_path
from branchmerge.evaluate.stats import (
    Comparison,
    Estimate,
    Lengths,
    Synergy,
    accuracy_table,
    bootstrap_mean,
    compare,
    length_table,
    merge_synergy,
    paired_compare,
    paired_test,
    pass1,
    pass1_ci,
    pass1_table,
    pass_at_k,
    pass_at_k_curve,
    pass_at_k_curves,
    sign_flip_p,
    wilson_interval,
)

__all__ = [
    "Claim",
    "Comparison",
    "Estimate",
    "Lengths",
    "ModelInfo",
    "Results",
    "Synergy",
    "accuracy_table",
    "bootstrap_mean",
    "build_claim",
    "compare",
    "evaluate_model",
    "judge_cache_path",
    "length_table",
    "load_mdr",
    "load_models",
    "load_set",
    "merge_synergy",
    "outputs_path",
    "paired_compare",
    "paired_test",
    "pass1",
    "pass1_ci",
    "pass1_table",
    "pass_at_k",
    "pass_at_k_curve",
    "pass_at_k_curves",
    "read_results",
    "render_report",
    "sign_flip_p",
    "truncation_rate",
    "wilson_interval",
]
