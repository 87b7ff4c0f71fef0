"""What each recipe stage reports when it finishes: one typed record per stage kind, kept in its folder's
`stage.json` (the `summary` field) and read back when a later run reuses the stage."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, RootModel

# The fields a stage's progress line shows, in this order (those a summary has).
_SHOWN = (
    "train", "eval", "traces", "errors", "kept", "dropped", "examples", "too_long", "steps", "final_loss", "tensors"
)  # fmt: skip


class StageSummary(BaseModel):
    """The base of every stage's summary; unknown fields are refused, so a misspelt one fails where it is made."""

    model_config = ConfigDict(extra="forbid")

    def describe(self) -> str:
        """One line for the run's progress output: `traces=192, errors=0`."""
        s = self.model_dump()
        parts = [f"{k}={s[k]}" for k in _SHOWN if k in s]
        if "accuracy" in s:
            parts.append(f"accuracy={100 * s['accuracy'].get('all', 0):.1f}%")
        return ", ".join(parts)


class ProblemsSummary(StageSummary):
    train: int
    eval: int
    domains: list[str]
    per_domain: dict[str, int]


class GenerateSummary(StageSummary):
    teacher: str
    traces: int
    errors: int
    truncated: int
    requests_this_run: int


class StepSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: int
    removed: dict[str, int]
    marked: dict[str, int]


class ProcessSummary(StageSummary):
    traces: int
    kept: int
    steps: dict[str, StepSummary]  # in the order the steps ran
    table: list[dict[str, Any]]  # verify's rows: accuracy per teacher and domain


class BuildSFTSummary(StageSummary):
    examples: int
    too_long: int
    tokens: int
    per_domain: dict[str, int]


class CurriculumStageSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    examples: int
    steps: int
    first_loss: float
    final_loss: float


class TrainSummary(StageSummary):
    examples: int
    steps: int
    first_loss: float
    final_loss: float
    train_tokens: int
    loss_tokens: int | None = None  # the tokens the loss was taken on; absent from records that predate it
    stages: list[CurriculumStageSummary] | None = None  # only a curriculum branch has them


class MergeSummary(StageSummary):
    method: str
    tensors: int


class MergeabilitySummary(StageSummary):
    """merge.mergeability's verdict on the domain experts, with the numbers it rests on (per expert)."""

    verdict: Literal["likely", "risky", "unlikely"]
    reason: str
    rel_delta: dict[str, float]  # ||delta|| / ||theta_student||, whole model
    rel_delta_no_embed: dict[str, float]  # the same without embed_tokens / lm_head
    mean_cosine: float | None  # between the task vectors (None: not defined)
    sign_conflict: float | None  # share of co-moved coordinates whose signs disagree
    sign_conflict_chance: float  # what independent signs would give
    forgetting: dict[str, float]  # mean relative rise of the loss on the other domains over the student's
    offdomain_loss: dict[str, dict[str, float]]  # expert -> domain -> loss ("student": the student's own)
    examples: dict[str, int]  # SFT examples measured per domain
    findings: list[str]

    def describe(self) -> str:
        return f"{self.verdict}: {self.reason}"


class RewardFit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: int
    heldout: int
    skipped: int
    mae: float
    spearman: float | None


class RewardModelsSummary(RootModel[dict[str, RewardFit]]):
    """target ("rv", "cd") -> how its regressor fits."""

    def describe(self) -> str:
        return ""


class GRPOSummary(StageSummary):
    steps: int
    problems: int
    first_reward: float
    last_reward: float
    clipped_ratio: float


class EvalSetSummary(StageSummary):
    set: str
    items: int


class EvalSummary(StageSummary):
    accuracy: dict[str, float]  # domain and "all" -> accuracy
    samples: int


Summary = StageSummary | RewardModelsSummary
