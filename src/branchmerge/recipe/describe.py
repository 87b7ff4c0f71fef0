"""What each model of a recipe run is, for the report's Branch-Merge claim and results.json
(`branchmerge.evaluate.claim_models.ModelInfo`): the student is the base, `expert-<domain>` an expert of that domain, the
mixture a mixture, every `merges:` entry a merge of the models its config names, the GRPO model other.

Compute comes from the stage records: tokens from a training stage's summary, wall time from the stage's own run
(the original run's when it was reused), so a merge's wall time is the merge stage's.
"""

from __future__ import annotations

from collections.abc import Sequence

from branchmerge.evaluate.claim_models import ModelInfo
from branchmerge.recipe.cache import StageOutcome
from branchmerge.recipe.resolve import STUDENT, expert_groups
from branchmerge.recipe.schema import Recipe
from branchmerge.recipe.summaries import TrainSummary
from branchmerge.train.branches import MIXTURE, expert_name


def describe_models(recipe: Recipe, outcomes: Sequence[StageOutcome]) -> list[ModelInfo]:
    """One descriptor per model the run made or started from; stages are found by their names
    (`train.<model>`, `grpo.<model>`, `merge.<model>`)."""
    ran = {o.name: o for o in outcomes}
    by_domain = recipe.train.experts == "domain"
    out = [ModelInfo(name=STUDENT, kind="base")]
    for name in [expert_name(g) for g in expert_groups(recipe)] + [MIXTURE] * recipe.train.mixture:
        o = ran.get(f"train.{name}")
        if o is None:
            continue
        s = o.summary
        assert isinstance(s, TrainSummary)
        counted = s.loss_tokens is not None  # older stage records hold the data set's size under train_tokens
        out.append(
            ModelInfo(
                name=name,
                kind="mixture" if name == MIXTURE else "expert",
                domain=name.removeprefix("expert-") if name != MIXTURE and by_domain else None,
                parents=[STUDENT],
                train_tokens=s.train_tokens if counted else None,
                loss_tokens=s.loss_tokens if counted else None,
                wall_s=o.original_seconds,
            )
        )
    if recipe.grpo is not None and f"grpo.{recipe.grpo.name}" in ran:
        o = ran[f"grpo.{recipe.grpo.name}"]
        out.append(
            ModelInfo(
                name=recipe.grpo.name, kind="other", parents=[recipe.grpo.start], wall_s=o.original_seconds
            )
        )
    for name, cfg in recipe.merges.items():
        o = ran.get(f"merge.{name}")
        if o is None:
            continue
        entries = [*(cfg.get("models") or []), *([cfg["base_model"]] if "base_model" in cfg else [])]
        parents = [str(e["model"] if isinstance(e, dict) else e) for e in entries]
        out.append(
            ModelInfo(
                name=name, kind="merge", parents=list(dict.fromkeys(parents)), wall_s=o.original_seconds
            )
        )
    return out
