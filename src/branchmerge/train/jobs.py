"""One training request per method: its settings model plus the inputs that go with it, and the rules that tie them
together, checked before any model is loaded.

Each request's fields are the names of the `branchmerge train <method>` options (README.md, "Train"), so an error
names the field the user set. A rule between two fields is a validator here, not a check in the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from branchmerge.train.branches import Budget
from branchmerge.train.dpo import DPOSettings, PairMode
from branchmerge.train.grpo import GRPOSettings
from branchmerge.train.kd import KDSettings
from branchmerge.train.reward_model import RewardModelSettings, Target
from branchmerge.train.sft import SFTSettings

MAX_SCORE = 9


def _band(value: Any) -> Any:
    """'L:H' -> (L, H), integer RV/CD scores with 0 ≤ L ≤ H ≤ 9; a tuple passes through to the tuple check."""
    if not isinstance(value, str):
        return value
    try:
        low, high = (int(x) for x in value.split(":"))
    except ValueError:
        raise ValueError("expected LOW:HIGH, e.g. 3:7") from None
    if not 0 <= low <= high <= MAX_SCORE:
        raise ValueError(f"expected 0 ≤ LOW ≤ HIGH ≤ {MAX_SCORE}")
    return float(low), float(high)


ScoreBand = Annotated[tuple[float, float], BeforeValidator(_band)]


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SFTJob(_Job):
    """SFT in one pass, as a curriculum of stages, or as branch experts (one per domain or teacher, plus the
    data-mixture baseline unless `no_mixture`); only the one-pass run holds out an evaluation set."""

    settings: SFTSettings = Field(default_factory=SFTSettings)
    curriculum: Path | None = None
    experts: Literal["domain", "teacher"] | None = None
    no_mixture: bool = False
    mixture_budget: Budget | None = None  # None: sum
    eval_fraction: float | None = None

    @field_validator("eval_fraction")
    @classmethod
    def _a_fraction(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v < 1:
            raise ValueError("expected a number between 0 and 1")
        return v

    @model_validator(mode="after")
    def _branch_options_need_experts(self) -> SFTJob:
        for name in ("no_mixture", "mixture_budget"):
            if getattr(self, name) not in (None, False) and self.experts is None:
                raise ValueError(f"{name}: applies only with experts")
        if self.eval_fraction is not None:
            for other in ("curriculum", "experts"):
                if getattr(self, other) is not None:
                    raise ValueError(f"eval_fraction: cannot be combined with {other}")
        return self


class RewardJob(_Job):
    """An RV or CD reward model on scored traces of the `problems` file."""

    settings: RewardModelSettings = Field(default_factory=RewardModelSettings)
    problems: Path
    target: Target = "rv"


class GRPOJob(_Job):
    """GRPO on problems; each RV/CD band goes with its reward model (checked by `train_grpo`)."""

    settings: GRPOSettings = Field(default_factory=GRPOSettings)
    rv_model: Path | None = None
    rv: ScoreBand | None = None
    cd_model: Path | None = None
    cd: ScoreBand | None = None
    lambda_rv: float = 1.0
    lambda_cd: float = 1.0


class DPOJob(_Job):
    """DPO on pairs built from traces of the `problems` file: verified (right over wrong) or verbosity (a right
    trace with an RV score inside the `rv` band over one outside it)."""

    settings: DPOSettings = Field(default_factory=DPOSettings)
    problems: Path
    pairs: PairMode = "verified"
    rv: ScoreBand | None = None

    @model_validator(mode="after")
    def _verbosity_needs_a_band(self) -> DPOJob:
        if self.pairs == "verbosity" and self.rv is None:
            raise ValueError("pairs verbosity: needs rv, the RV band of the chosen traces")
        return self


class KDJob(_Job):
    """Logit KD online from `teacher`, from an already filled `kd_cache`, or both (fill the cache from the
    teacher, then train from it); `top_k` sizes the cache, so it is read only when filling one."""

    settings: KDSettings = Field(default_factory=KDSettings)
    teacher: Path | None = None
    kd_cache: Path | None = None

    @model_validator(mode="after")
    def _a_source(self) -> KDJob:
        if self.teacher is None and self.kd_cache is None:
            raise ValueError(
                "KD needs teacher (online), kd_cache (an already filled cache), or both (fill the cache, then "
                "train from it)"
            )
        if "top_k" in self.settings.model_fields_set and (self.teacher is None or self.kd_cache is None):
            raise ValueError("top_k: read only when filling a cache (teacher with kd_cache)")
        return self
