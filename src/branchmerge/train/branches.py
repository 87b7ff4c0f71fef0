"""Branch experts and the data-mixture baseline (TinyR1's Branch-Merge; the two-teacher recipe by teacher).

From one base, one expert per domain (`expert-math`) or per teacher (`expert-<teacher>`), each on its share of
the SFT examples, plus a `mixture` trained on all of them. Every branch keeps the same seed and settings; only
the mixture's step budget differs:

    budget "sum":  mixture steps = sum of the experts' steps (the same compute as all experts together)
    budget "same": mixture steps = the longest expert's steps (the same compute as one expert)

With a curriculum, each branch runs the stages on its own examples; stages given in epochs are resolved to
steps per branch here, so a plan states exactly what will run and the budget applies stage by stage.

A trace rewritten by the `rewrite` processor keeps its teacher's name plus `+rw` (the Trace contract); it
counts towards that teacher's expert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from branchmerge.errors import BranchmergeError
from branchmerge.records import SFTExample
from branchmerge.train.curriculum import (
    CurriculumResult,
    CurriculumStage,
    Where,
    describe_where,
    empty_stage_errors,
    select,
    stage_settings,
    train_curriculum,
)
from branchmerge.train.sft import SFTSettings, TrainResult, train_sft

SplitBy = Literal["domain", "teacher", "none"]  # none: no experts, the mixture alone
Budget = Literal["sum", "same"]
MIXTURE = "mixture"
_REWRITE_SUFFIX = "+rw"


def expert_name(group: str) -> str:
    return f"expert-{group}"


def group_of(example: SFTExample, by: SplitBy) -> str:
    """The expert an example belongs to: its domain, or its teacher (a rewrite counts for the original's)."""
    if by == "domain":
        return example.domain
    teacher = example.teacher
    while teacher.endswith(_REWRITE_SUFFIX):
        teacher = teacher.removesuffix(_REWRITE_SUFFIX)
    return teacher


@dataclass(frozen=True)
class BranchPlan:
    """One model to train from the base: its examples (`where`, empty = all), settings and optional curriculum
    (stages with their steps resolved)."""

    name: str
    where: Where
    settings: SFTSettings
    curriculum: list[CurriculumStage] | None = None


def _resolved(
    examples: Sequence[SFTExample], stages: Sequence[CurriculumStage], settings: SFTSettings
) -> list[CurriculumStage]:
    """The stages with `max_steps` fixed from this branch's examples (epochs -> steps)."""
    out = []
    for stage in stages:
        steps = stage_settings(stage, len(select(examples, stage.where)), settings).max_steps
        out.append(stage.model_copy(update={"epochs": None, "max_steps": steps}))
    return out


def plan_branches(
    examples: Sequence[SFTExample],
    by: SplitBy = "domain",
    mixture: bool = True,
    budget: Budget = "sum",
    settings: SFTSettings | None = None,
    *,
    groups: Sequence[str] | None = None,
    curriculum: Sequence[CurriculumStage] | None = None,
) -> list[BranchPlan]:
    """The experts (one per group, in `groups` order; default: every group found, sorted) then the mixture.

    Every branch (and every curriculum stage of it) must have examples; all problems are reported at once.
    """
    s = settings or SFTSettings()
    if by not in ("domain", "teacher", "none"):
        raise BranchmergeError(f"experts by '{by}': not an expert split (known: domain, teacher, none)")
    if budget not in ("sum", "same"):
        raise BranchmergeError(f"mixture budget '{budget}': not a budget (known: sum, same)")
    if not examples:
        raise BranchmergeError("branches: no SFT examples to train on")
    if by == "none":  # one model on everything: the mixture, with its curriculum
        if not mixture:
            raise BranchmergeError("branches: no experts and no mixture leaves nothing to train")
        empty = empty_stage_errors(list(examples), curriculum, MIXTURE) if curriculum else []
        if empty:
            raise BranchmergeError("\n".join(empty))
        return [BranchPlan(MIXTURE, {}, s, _resolved(examples, curriculum, s) if curriculum else None)]
    found: dict[str, set[str]] = {}
    for e in examples:
        found.setdefault(group_of(e, by), set()).add(getattr(e, by))
    wanted = list(groups) if groups is not None else sorted(found)
    errors: list[str] = []
    plans: list[BranchPlan] = []
    for g in wanted:
        name = expert_name(g)
        if g not in found:
            errors.append(
                f"{name}: no SFT examples with {by}={g} (found: {', '.join(sorted(found)) or 'none'})"
            )
            continue
        where: Where = {by: sorted(found[g])}
        stages = None
        if curriculum:
            mine = select(examples, where)
            errors += empty_stage_errors(mine, curriculum, name)
            stages = _resolved(mine, curriculum, s)
        plans.append(BranchPlan(name, where, s, stages))
    if errors:
        raise BranchmergeError("\n".join(errors))
    if mixture and plans:
        if curriculum:
            per_stage = zip(*(p.curriculum or [] for p in plans), strict=True)
            mixed = [_budgeted(list(column), budget) for column in per_stage]
            plans.append(BranchPlan(MIXTURE, {}, s, mixed))
        else:
            steps = s.max_steps * len(plans) if budget == "sum" else s.max_steps
            plans.append(BranchPlan(MIXTURE, {}, s.model_copy(update={"max_steps": steps})))
    return plans


def _budgeted(expert_stages: list[CurriculumStage], budget: Budget) -> CurriculumStage:
    """The mixture's version of one curriculum stage, given the experts' resolved versions of it."""
    steps = [st.max_steps or 0 for st in expert_stages]
    return expert_stages[0].model_copy(update={"max_steps": sum(steps) if budget == "sum" else max(steps)})


def train_branch(
    examples: Sequence[SFTExample],
    base_model: str | Path,
    out_dir: str | Path,
    plan: BranchPlan,
    *,
    show_progress: bool = True,
) -> TrainResult | CurriculumResult:
    """Train one planned branch from `base_model` into `out_dir` (full safetensors + the base's tokenizer)."""
    mine = select(examples, plan.where)
    if not mine:
        raise BranchmergeError(f"{plan.name}: no SFT examples ({describe_where(plan.where)})")
    if plan.curriculum:
        return train_curriculum(
            mine,
            base_model,
            out_dir,
            plan.curriculum,
            plan.settings,
            label=plan.name,
            show_progress=show_progress,
        )
    return train_sft(mine, base_model, out_dir, plan.settings, label=plan.name, show_progress=show_progress)


def train_branches(
    examples: Sequence[SFTExample],
    base_model: str | Path,
    out_dir: str | Path,
    plans: Sequence[BranchPlan],
    *,
    show_progress: bool = True,
) -> dict[str, TrainResult | CurriculumResult]:
    """Train every plan from the same base into `out_dir/<plan name>/`, ready for `merge`."""
    out = Path(out_dir)
    return {
        p.name: train_branch(examples, base_model, out / p.name, p, show_progress=show_progress)
        for p in plans
    }
