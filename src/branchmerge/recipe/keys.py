"""Stage keys: each stage's folder is named by a hash of everything that decides its output (settings, input
files' bytes, upstream keys, model weights), so a rerun reuses exactly the stages whose inputs did not change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from branchmerge.recipe.cache import dir_fingerprint, fingerprint
from branchmerge.recipe.data_stages import path_fingerprint
from branchmerge.recipe.resolve import data_path
from branchmerge.recipe.schema import Recipe, TeacherSpec
from branchmerge.recipe.specs import EvalSetSpec, EvalSpec
from branchmerge.train.branches import BranchPlan


def train_key(s_key: str, student_fp: str, plan: BranchPlan) -> str:
    """A branch's stage key. Domain experts and the mixture without a curriculum keep the keys of the versions
    before teacher experts and curricula existed, so earlier runs of such recipes are reused."""
    where = plan.where
    domains = where.get("domain") if where else None
    parts: list[Any] = [s_key, student_fp, plan.settings.model_dump(), domains]
    if set(where) - {"domain"} or plan.curriculum:
        parts += [where, [st.model_dump() for st in plan.curriculum or []]]
    return fingerprint("train", *parts)


def problems_key(recipe: Recipe, base: Path) -> str:
    files = [path_fingerprint(data_path(f.path, base)) for f in recipe.problems.files]
    return fingerprint("problems", recipe.problems.model_dump(), files)


def generate_key(recipe: Recipe, t: TeacherSpec, p_key: str, ckpt: Path | None) -> str:
    who = dir_fingerprint(ckpt) if ckpt else (t.base_url, t.model)
    return fingerprint(
        "generate", p_key, t.model_dump(exclude={"max_concurrency"}), who, recipe.generate.model_dump()
    )


def process_key(
    recipe: Recipe,
    p_key: str,
    g_keys: list[str],
    judge: tuple[TeacherSpec, Path | None] | None,
    student: Path,
) -> str:
    pspec = recipe.process
    by_student = pspec.difficulty.method == "student" and "difficulty" in pspec.steps
    return fingerprint(
        "process",
        p_key,
        g_keys,
        pspec.model_dump(mode="json"),
        judge[0].model_dump(exclude={"max_concurrency"}) if judge else None,
        dir_fingerprint(judge[1]) if judge and judge[1] else None,
        dir_fingerprint(student) if by_student else None,
    )


def eval_set_key(spec: EvalSetSpec, p_key: str, base: Path) -> str:
    source = (
        p_key
        if spec.name == "heldout"
        else path_fingerprint(data_path(spec.path, base))
        if spec.path
        else None
    )
    return fingerprint(
        "eval-set", spec.model_dump(exclude={"n", "temperature", "top_p", "max_tokens"}), source
    )


def eval_key(
    set_key: str, model_key: str, name: str, sampling: dict[str, Any], e: EvalSpec, s: EvalSetSpec
) -> str:
    judge = e.judge if s.name == "mdr" else None
    return fingerprint("eval", set_key, model_key, name, sampling, judge)


def eval_stage_name(model: str, label: str, e: EvalSpec) -> str:
    """`eval.<model>` when the recipe evaluates on one set, else `eval.<model>.<set>`."""
    return f"eval.{model}" if len(e.sets) == 1 else f"eval.{model}.{label}"


def build_sft_key(v_key: str, student_fp: str, recipe: Recipe) -> str:
    return fingerprint("build-sft", v_key, student_fp, recipe.build_sft.model_dump())
