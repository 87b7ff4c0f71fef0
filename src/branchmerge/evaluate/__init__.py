"""Evaluation: run models on benchmark items, grade with the shared graders, compute statistics, write reports."""

from branchmerge.evaluate.runner import evaluate_model
from branchmerge.evaluate.stats import accuracy_table, paired_test, wilson_interval

__all__ = ["accuracy_table", "evaluate_model", "paired_test", "wilson_interval"]
