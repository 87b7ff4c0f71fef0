"""Recipe sections for data in and out: where training problems come from, what each model is evaluated on, and
the reward-model and GRPO stages that follow SFT."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from branchmerge.train.grpo import GRPOSettings
from branchmerge.train.reward_model import RewardModelSettings, Target

Source = Literal["tinylab", "mdr", "files"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProblemFile(_Spec):
    """One file (or `datasets` folder) of training problems. `set: problems` reads our own Problem JSONL; a
    registered set name (math500, gsm8k, gpqa-diamond, …) reads its published layout; any other name needs a
    `mapping` (see `evaluate.loaders.load_set`). `domain` relabels every problem of the file."""

    path: str
    set: str = "problems"
    mapping: dict[str, Any] | None = None
    domain: str | None = None
    limit: int | None = Field(default=None, gt=0)
    split: str | None = None
    seed: int = 0


class ProblemsSpec(_Spec):
    """Training problems, and (tinylab) the held-out items the `heldout` eval set uses.

    - `tinylab`: the embedded procedural domains; `eval_per_domain` held-out items are drawn first and the
      training items exclude their questions.
    - `mdr`: fresh items from the built-in benchmark's generators (never its fixed items, which are the test).
    - `files`: local files (`files:`); `domains` then keeps only those domains (empty: all).
    `relabel` renames domains (e.g. tinylab `add` → `math`), so a rehearsal with tiny data keeps a recipe's
    expert and merge names."""

    source: Source = "tinylab"
    domains: list[str] = []
    train_per_domain: int | None = Field(default=None, gt=0)
    eval_per_domain: int | None = Field(default=None, gt=0)
    levels: list[int] | None = None  # None: tinylab 1-4, mdr 1-10
    train_seed: int = 1
    eval_seed: int = 2
    files: list[ProblemFile] = []
    relabel: dict[str, str] = {}

    @field_validator("source", mode="before")
    @classmethod
    def _known_source(cls, v: Any) -> Any:
        if v not in ("tinylab", "mdr", "files"):
            raise ValueError(f"'{v}' is not a problem source (known: tinylab, mdr, files)")
        return v

    @field_validator("domains")
    @classmethod
    def _known_domains(cls, v: list[str], info: ValidationInfo) -> list[str]:
        source = info.data.get("source")
        if source == "tinylab":
            from branchmerge.tinylab.domains import DOMAINS

            known = list(DOMAINS)
            if not v:
                raise ValueError("at least one domain is needed")
        elif source == "mdr":
            from branchmerge.evaluate.mdr import domain_names

            known = domain_names()
        else:
            return v
        bad = [d for d in v if d not in known]
        if bad:
            raise ValueError(f"unknown {source} domain(s) {bad} (known: {', '.join(known)})")
        return v

    @model_validator(mode="after")
    def _per_source(self) -> ProblemsSpec:
        if self.source == "tinylab":
            if self.train_per_domain is None or self.eval_per_domain is None:
                raise ValueError("tinylab problems need train_per_domain and eval_per_domain")
        elif self.source == "mdr":
            if self.train_per_domain is None:
                raise ValueError("mdr problems need train_per_domain")
        elif not self.files:
            raise ValueError("files: give at least one file with source: files")
        if self.source != "files" and self.files:
            raise ValueError(f"files: only read with source: files (source is {self.source})")
        return self

    @property
    def train_domains(self) -> list[str]:
        """The domains of the training problems after `relabel` (what domain experts are trained on)."""
        if self.source == "mdr" and not self.domains:
            from branchmerge.evaluate.mdr import domain_names

            return [self.relabel.get(d, d) for d in domain_names()]
        named = self.domains or [f.domain for f in self.files if f.domain]
        return list(dict.fromkeys(self.relabel.get(d, d) for d in named))


class EvalSetSpec(_Spec):
    """One thing every model is evaluated on. `heldout`: the problems stage's held-out items (tinylab); `mdr`:
    the built-in 10-domain benchmark (its fixed items, or fresh ones with `fresh_seed`); a registered set or any
    named file (`path`, optional `mapping`). Sampling settings left out inherit the eval section's."""

    name: str
    path: str | None = None
    mapping: dict[str, Any] | None = None
    split: str | None = None
    limit: int | None = Field(default=None, gt=0)
    seed: int = 0  # GPQA's option order
    domains: list[str] | None = None  # mdr only
    levels: list[int] | None = None  # mdr only
    fresh_seed: int | None = None  # mdr only
    label: str | None = None  # the report's column for a standard set (default: its name)
    n: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _fields_fit_the_set(self) -> EvalSetSpec:
        builtin = self.name in ("heldout", "mdr")
        if builtin and self.path is not None:
            raise ValueError(f"path: '{self.name}' is built in and reads no file")
        if not builtin and self.path is None:
            raise ValueError(f"path: the set '{self.name}' is read from a local file; give its path")
        if self.name != "mdr" and (self.domains or self.levels or self.fresh_seed is not None):
            raise ValueError("domains / levels / fresh_seed only apply to the mdr set")
        return self


class EvalSpec(_Spec):
    n: int = Field(default=1, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=512, gt=0)
    seed: int = 0
    baseline: str = "student"
    sets: list[EvalSetSpec] = Field(default_factory=lambda: [EvalSetSpec(name="heldout")], min_length=1)
    judge: str | None = None  # a teacher of this recipe, for judge-graded items (mdr scenario / ethics)
    models: list[str] | None = None  # which models to evaluate (None: all)
    max_k: int | None = Field(default=None, gt=0)  # the report's pass@k curves go up to this k

    def sampling(self, s: EvalSetSpec) -> dict[str, Any]:
        """The set's sampling settings, each falling back to this section's."""
        return {
            "n": s.n or self.n,
            "temperature": self.temperature if s.temperature is None else s.temperature,
            "top_p": s.top_p or self.top_p,
            "max_tokens": s.max_tokens or self.max_tokens,
            "seed": self.seed,
        }


class MergeabilitySpec(_Spec):
    """The mergeability stage, which runs where there are two or more domain experts: each expert's loss on the
    first `examples` SFT examples of every domain beside the student's (every model is loaded in fp32, on the
    GPU when there is one), then the verdict of `merge.mergeability`."""

    enabled: bool = True
    examples: int = Field(default=64, gt=0)  # per domain


class RewardModelsSpec(_Spec):
    """RV / CD regressors trained from the student on the processed traces' judge scores."""

    targets: list[Target] = ["rv", "cd"]
    settings: RewardModelSettings = RewardModelSettings()


class GRPOSpec(_Spec):
    """A GRPO stage from a model of this recipe, rewarded for format, accuracy and (with reward models) the
    RV / CD bands; the result is a new model named `name`."""

    start: str = "mixture"
    name: str = "grpo"
    problems: int | None = Field(default=None, gt=0)  # the first N training problems (None: all)
    settings: GRPOSettings = GRPOSettings()
    lambda_rv: float = 1.0
    lambda_cd: float = 1.0
    rv_band: tuple[float, float] | None = None
    cd_band: tuple[float, float] | None = None
