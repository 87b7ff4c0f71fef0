"""Graders: one module each, registered by name; verification and evaluation use the same ones."""

from branchmerge.graders.base import Grade, grade
from branchmerge.graders.registry import GRADERS

__all__ = ["GRADERS", "Grade", "grade"]
