"""The recipe schema: validated once on entry, unknown keys are errors that name the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from branchmerge.cot.registry import ProcessOptions
from branchmerge.errors import BranchmergeError, validation_error
from branchmerge.recipe.specs import (
    EvalSpec,
    GRPOSpec,
    MergeabilitySpec,
    ProblemsSpec,
    RewardModelsSpec,
)
from branchmerge.teachers.engines import Engine
from branchmerge.train.branches import Budget, SplitBy
from branchmerge.train.curriculum import CurriculumStage
from branchmerge.train.sft import SFTSettings


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherSpec(_Spec):
    """A teacher: a local checkpoint that the run serves on 127.0.0.1, or an OpenAI-compatible endpoint."""

    name: str
    generates: bool = True  # False: only a judge (process.judge / eval.judge), no traces of its own
    checkpoint: str | None = None
    base_url: str | list[str] | None = None  # one endpoint, or several servers of the same model (a pool)
    model: str | None = None
    api_key_env: str | None = None
    max_concurrency: int = Field(default=8, gt=0)  # per endpoint
    # Passed to the client as they are (see teachers.client.TeacherConfig):
    requests_per_min: float | None = Field(default=None, gt=0)
    tokens_per_min: float | None = Field(default=None, gt=0)
    price_prompt: float | None = Field(default=None, ge=0)  # USD per million tokens
    price_completion: float | None = Field(default=None, ge=0)
    timeout_s: float = Field(default=120, gt=0)
    max_retries: int = Field(default=4, ge=0)
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSpec:
        if (self.checkpoint is None) == (self.base_url is None):
            raise ValueError("give exactly one of 'checkpoint' (served locally) or 'base_url' (an endpoint)")
        if self.base_url is not None and self.model is None:
            raise ValueError("'model' is required with 'base_url'")
        return self


class GenerateSpec(_Spec):
    n: int = Field(default=1, gt=0)
    temperatures: list[float] = [0.6]
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=512, gt=0)
    seed: int = 0
    # The mean completion length `run --dry-run` prices requests at (None: max_tokens, an upper bound).
    expected_tokens: int | None = Field(default=None, gt=0)


class ProcessSpec(ProcessOptions):
    """The CoT processors between generation and SFT: a preset or a list of steps, each step's options, and
    the judge (a teacher of this recipe by name) for difficulty / rv_cd / rewrite."""

    steps: str | list[str] = ["verify"]
    judge: str | None = None

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, v: str | list[str]) -> list[str]:
        from branchmerge.cot.registry import resolve_steps

        try:
            return resolve_steps(v)
        except BranchmergeError as e:
            raise ValueError(str(e).removeprefix("process: ")) from None


class BuildSFTSpec(_Spec):
    max_length: int = Field(default=4096, gt=0)


class TrainSpec(_Spec):
    """The student, how to split it into experts (one per domain, or per teacher: `expert-<teacher>`), the
    data-mixture baseline and its step budget, the SFT settings, and an optional curriculum every branch runs."""

    student: str  # a folder, `tinylab:student`, or a Hub id (Org/Name), downloaded when the run starts
    # The student's config.json, for `run --dry-run`'s checks and memory estimates before a Hub student is local.
    student_config: str | None = None
    experts: SplitBy = "domain"
    mixture: bool = True
    mixture_budget: Budget = (
        "sum"  # "sum": the mixture gets the experts' total steps; "same": one expert's steps
    )
    settings: SFTSettings = SFTSettings()
    curriculum: list[CurriculumStage] | None = None  # e.g. DistilQwen: difficulty medium, then hard

    @field_validator("experts", mode="before")
    @classmethod
    def _experts(cls, v: Any) -> Any:
        if v not in get_args(SplitBy):
            raise ValueError(f"'{v}' is not an expert split (known: {', '.join(get_args(SplitBy))})")
        return v

    @field_validator("mixture_budget", mode="before")
    @classmethod
    def _budget(cls, v: Any) -> Any:
        if v not in get_args(Budget):
            raise ValueError(f"'{v}' is not a mixture budget (known: {', '.join(get_args(Budget))})")
        return v

    @field_validator("curriculum")
    @classmethod
    def _stages(cls, v: list[CurriculumStage] | None) -> list[CurriculumStage] | None:
        if v is not None and not v:
            raise ValueError("give at least one stage, or leave the curriculum out")
        return v


class Recipe(_Spec):
    name: str
    problems: ProblemsSpec
    teachers: list[TeacherSpec] = Field(min_length=1)
    generate: GenerateSpec = GenerateSpec()
    process: ProcessSpec = ProcessSpec()
    build_sft: BuildSFTSpec = BuildSFTSpec()
    train: TrainSpec
    reward_models: RewardModelsSpec | None = None
    grpo: GRPOSpec | None = None
    mergeability: MergeabilitySpec = MergeabilitySpec()
    merges: dict[str, dict[str, Any]] = {}
    eval: EvalSpec = EvalSpec()
    # The server of every local checkpoint the run asks over HTTP (teachers, judge, student, evaluated models):
    # auto = vLLM when it is installed and a CUDA GPU is present, else the built-in one (teachers/engines.py).
    engine: Engine = "auto"

    @model_validator(mode="after")
    def _unique_teacher_names(self) -> Recipe:
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        for where, judge in (("process.judge", self.process.judge), ("eval.judge", self.eval.judge)):
            if judge is not None and judge not in names:
                raise ValueError(f"{where}: '{judge}' is not a teacher of this recipe ({names})")
        if not any(t.generates for t in self.teachers):
            raise ValueError("teachers: no teacher generates traces (every one has generates: false)")
        if self.train.experts == "none" and not self.train.mixture:
            raise ValueError("train: experts: none trains the mixture alone; it needs mixture: true")
        if self.train.experts == "domain" and not self.problems.train_domains:
            raise ValueError(
                "problems.domains: domain experts need the domains named (or a `domain` on every file)"
            )
        return self


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a recipe dict."""
    for item in overrides:
        if "=" not in item:
            raise BranchmergeError(f"override '{item}': expected KEY=VALUE, e.g. train.settings.max_steps=20")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise BranchmergeError(f"{source}: override '{key}': '{p}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe; every problem is reported at once, each naming the file and field."""
    path = Path(path)
    if not path.exists():
        raise BranchmergeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise BranchmergeError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise BranchmergeError(f"{path}: a recipe must be a YAML mapping")
    data = apply_overrides(data, overrides or [], str(path))
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise validation_error(str(path), e) from None
