"""Curriculum SFT: real stages, trained in order, each continuing from the weights the previous one saved.

TRL has no ordered sampling (its Trainer shuffles, packing reorders by length), so a curriculum is a
sequence of separate `train_sft` passes: stage k trains on the examples its `where` filter selects, starting
from stage k-1's checkpoint. DistilQwen trains on medium traces first, then hard ones (`DISTILQWEN_CURRICULUM`).

    out.stages/01-medium/   stage 1's full checkpoint + curriculum_stage.json (its key and numbers)
    out.stages/02-hard/     stage 2, trained from 01-medium
    out/                    a copy of the last stage (hard links where possible) + curriculum.json

A rerun reuses every stage whose key matches: the key chains the input model (the base's path, file sizes and
modification times for stage 1, the previous stage's key after that), the stage's examples and its resolved
settings, so changing stage k retrains k and everything after it, and nothing before.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from branchmerge.errors import BranchmergeError, validation_error
from branchmerge.records import SFTExample, atomic_dir, atomic_write_text
from branchmerge.teachers.local import check_model_dir
from branchmerge.train.sft import SFTSettings, train_sft

# The SFTExample fields a `where` filter may name (all plain strings).
WHERE_FIELDS = ("domain", "difficulty", "teacher", "problem_id")
_OWN_FIELDS = ("max_steps", "learning_rate")  # set on the stage itself, not in its `settings`
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RECORD = "curriculum_stage.json"
SUMMARY = "curriculum.json"

Where = dict[str, list[str]]


class CurriculumStage(BaseModel):
    """One pass: the examples `where` selects (field -> accepted values; empty = all), for `epochs` or
    `max_steps` (neither: the run's max_steps), with an optional learning rate and other SFTSettings
    overrides."""

    model_config = ConfigDict(extra="forbid")

    name: str
    where: Where = Field(default_factory=dict)
    epochs: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    learning_rate: float | None = Field(default=None, gt=0)
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                f"'{v}' is not a usable stage name (letters, digits, '_', '.', '-'; it names a folder)"
            )
        return v

    @field_validator("where", mode="before")
    @classmethod
    def _where(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v  # pydantic reports the type
        bad = [k for k in v if k not in WHERE_FIELDS]
        if bad:
            raise ValueError(f"{bad} not a field of an SFT example (known: {', '.join(WHERE_FIELDS)})")
        out = {k: [x] if isinstance(x, str) else x for k, x in v.items()}
        empty = [k for k, x in out.items() if isinstance(x, list) and not x]
        if empty:
            raise ValueError(f"{empty}: give at least one value to match")
        return out

    @field_validator("settings")
    @classmethod
    def _settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        own = [k for k in v if k in _OWN_FIELDS]
        if own:
            raise ValueError(f"{own}: set these on the stage itself, not under settings")
        known = SFTSettings.model_fields
        bad = [k for k in v if k not in known]
        if bad:
            raise ValueError(f"{bad} not an SFT setting (known: {', '.join(known)})")
        try:
            SFTSettings.model_validate(v)
        except ValidationError as e:
            err = e.errors()[0]
            raise ValueError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        return v

    @model_validator(mode="after")
    def _one_length(self) -> CurriculumStage:
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("give 'epochs' or 'max_steps', not both")
        return self


DISTILQWEN_CURRICULUM: tuple[CurriculumStage, ...] = (
    CurriculumStage(name="medium", where={"difficulty": ["medium"]}),
    CurriculumStage(name="hard", where={"difficulty": ["hard"]}),
)


def describe_where(where: Where) -> str:
    """{'difficulty': ['medium', 'hard']} -> "difficulty in [medium, hard]"; {} -> "all examples"."""
    parts = [f"{k}={v[0]}" if len(v) == 1 else f"{k} in [{', '.join(v)}]" for k, v in where.items()]
    return " and ".join(parts) or "all examples"


def select(examples: Sequence[SFTExample], where: Where) -> list[SFTExample]:
    """The examples whose every named field has one of the accepted values, in their original order."""
    return [e for e in examples if all(getattr(e, k) in values for k, values in where.items())]


def stage_settings(stage: CurriculumStage, n_examples: int, settings: SFTSettings) -> SFTSettings:
    """The run's settings with the stage's overrides; epochs -> ceil(n_examples * epochs / batch_size)."""
    update = dict(stage.settings)
    if stage.learning_rate is not None:
        update["learning_rate"] = stage.learning_rate
    # only the fields given, so the settings' own derived defaults (QLoRA's bf16) follow the stage's overrides
    s = SFTSettings.model_validate({**settings.model_dump(exclude_unset=True), **update})
    if stage.max_steps is not None:
        steps = stage.max_steps
    elif stage.epochs is not None:
        steps = max(1, math.ceil(n_examples * stage.epochs / s.batch_size))
    else:
        steps = s.max_steps
    return s.model_copy(update={"max_steps": steps})


def empty_stage_errors(
    examples: Sequence[SFTExample], stages: Sequence[CurriculumStage], who: str = "curriculum"
) -> list[str]:
    """One line per stage that selects no example, naming the stage and its filter."""
    errors = []
    for i, stage in enumerate(stages, start=1):
        if select(examples, stage.where):
            continue
        hint = ""
        if "difficulty" in stage.where and not any(e.difficulty for e in examples):
            hint = " (no example has a difficulty: run the 'difficulty' processor first)"
        errors.append(
            f"{who}: stage {i} '{stage.name}' ({describe_where(stage.where)}): no SFT examples{hint}"
        )
    return errors


def load_curriculum(path: str | Path) -> list[CurriculumStage]:
    """Stages from a YAML file (a list, or a mapping with a `stages:` list); errors name the file and field."""
    path = Path(path)
    if not path.exists():
        raise BranchmergeError(f"{path}: curriculum file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise BranchmergeError(f"{path}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not (isinstance(data, list) and data) and not (isinstance(data, dict) and data.get("stages")):
        raise BranchmergeError(f"{path}: expected a non-empty list of stages (or `stages:` with one)")
    try:
        if isinstance(data, list):
            return _STAGE_LIST.validate_python(data)
        return _CurriculumFile.model_validate(data).stages
    except ValidationError as e:
        raise validation_error(str(path), e) from None


class _CurriculumFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stages: list[CurriculumStage]


_STAGE_LIST = TypeAdapter(list[CurriculumStage])


@dataclass(frozen=True)
class CurriculumStageResult:
    name: str
    where: Where
    out_dir: Path
    examples: int
    steps: int
    first_loss: float
    final_loss: float
    seconds: float  # of the run that trained it
    train_tokens: int | None  # non-padding tokens seen over the stage's steps (None: not counted)
    loss_tokens: int | None = None
    reused: bool = False


@dataclass(frozen=True)
class CurriculumResult:
    """Totals over the stages (`examples` counts an example once per stage that trained on it)."""

    out_dir: Path
    stages: list[CurriculumStageResult] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def first_loss(self) -> float:
        return self.stages[0].first_loss

    @property
    def final_loss(self) -> float:
        return self.stages[-1].final_loss

    @property
    def seconds(self) -> float:
        return sum(0.0 if s.reused else s.seconds for s in self.stages)

    @property
    def examples(self) -> int:
        return sum(s.examples for s in self.stages)

    @property
    def train_tokens(self) -> int | None:
        counts = [s.train_tokens for s in self.stages]
        return None if None in counts else sum(c for c in counts if c is not None)

    @property
    def loss_tokens(self) -> int | None:
        counts = [s.loss_tokens for s in self.stages]
        return None if None in counts else sum(c for c in counts if c is not None)


def stages_dir(out_dir: str | Path) -> Path:
    """Where the stages of a curriculum that ends in `out_dir` are kept: the sibling `<out>.stages/`."""
    out = Path(out_dir)
    return out.with_name(out.name + ".stages")


def _digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _model_identity(model_dir: Path) -> list[Any]:
    """The base as a rerun sees it: its path and each file's size and modification time (as make does)."""
    files = sorted(f for f in model_dir.iterdir() if f.is_file())
    return [str(model_dir.resolve()), [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]]


def _finished(stage_dir: Path, key: str) -> CurriculumStageResult | None:
    """The stage's recorded result when its folder holds a finished run with this key."""
    try:
        info = json.loads((stage_dir / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("key") != key:
        return None
    info = {k: v for k, v in info.items() if k != "key"}
    try:
        return CurriculumStageResult(**{**info, "out_dir": stage_dir, "reused": True})
    except TypeError:  # a record of another version: train again
        return None


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def train_curriculum(
    examples: Sequence[SFTExample],
    base_model: str | Path,
    out_dir: str | Path,
    stages: Sequence[CurriculumStage] = DISTILQWEN_CURRICULUM,
    settings: SFTSettings | None = None,
    *,
    label: str = "curriculum",
    show_progress: bool = True,
) -> CurriculumResult:
    """Train `stages` in order from `base_model`, each saved under `<out>.stages/NN-name/`, the last as `out`.

    Every stage must select at least one example; all empty stages are reported at once, before any training.
    """
    s = settings or SFTSettings()
    base = Path(base_model)
    out = Path(out_dir)
    if not stages:
        raise BranchmergeError(f"{label}: a curriculum needs at least one stage")
    errors = empty_stage_errors(examples, stages, label)
    if errors:
        raise BranchmergeError("\n".join(errors))
    check_model_dir(base)

    results: list[CurriculumStageResult] = []
    previous_dir, previous_key = base, _digest(_model_identity(base))
    for i, stage in enumerate(stages, start=1):
        chosen = select(examples, stage.where)
        st = stage_settings(stage, len(chosen), s)
        key = _digest(previous_key, [e.model_dump(mode="json") for e in chosen], st.model_dump(mode="json"))
        stage_dir = stages_dir(out) / f"{i:02d}-{stage.name}"
        done = _finished(stage_dir, key)
        if done is None:
            r = train_sft(
                list(chosen),
                previous_dir,
                stage_dir,
                st,
                label=f"{label} {i}/{len(stages)} {stage.name}",
                show_progress=show_progress,
            )
            done = CurriculumStageResult(
                name=stage.name,
                where=stage.where,
                out_dir=stage_dir,
                examples=r.examples,
                steps=r.steps,
                first_loss=r.first_loss,
                final_loss=r.final_loss,
                seconds=r.seconds,
                train_tokens=r.train_tokens,
                loss_tokens=r.loss_tokens,
            )
            record = {k: v for k, v in asdict(done).items() if k not in ("out_dir", "reused")}
            atomic_write_text(stage_dir / RECORD, json.dumps({"key": key, **record}, indent=2))
        results.append(done)
        previous_dir, previous_key = stage_dir, key

    with atomic_dir(out) as tmp:
        for f in previous_dir.iterdir():
            if f.is_file() and f.name != RECORD:
                _link_or_copy(f, tmp / f.name)
        summary = [{k: v for k, v in asdict(r).items() if k != "out_dir"} for r in results]
        (tmp / SUMMARY).write_text(json.dumps({"stages": summary}, indent=2, default=str), encoding="utf-8")
    return CurriculumResult(out_dir=out, stages=results)
