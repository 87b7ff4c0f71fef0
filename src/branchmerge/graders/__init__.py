"""Graders: one module each, registered by name; verification and evaluation use the same ones."""

from branchmerge.graders.base import Grade, Grader, GraderSpec, grade, needs_reference
from branchmerge.graders.parallel import grade_many
from branchmerge.graders.registry import GRADERS, unknown_graders

__all__ = [
    "GRADERS",
    "Grade",
    "Grader",
    "GraderSpec",
    "grade",
    "grade_many",
    "needs_reference",
    "unknown_graders",
]
