"""Recipes: one YAML for the whole loop, run as a DAG of content-addressed, cached stages."""

from branchmerge.recipe.runner import RunResult, run_recipe
from branchmerge.recipe.schema import Recipe, load_recipe

__all__ = ["Recipe", "RunResult", "load_recipe", "run_recipe"]
