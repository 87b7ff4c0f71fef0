"""The merge config: mergekit's YAML (the `models:` form), checked for shape before anything else happens.

This module only checks that the document is well formed. What needs the method registry or the disk (is the
method known, does it take this many models, do the folders exist) is checked in `plan.py`, still before any
weight is read.

Parameter values keep the plain YAML structure (numbers, lists, `{filter, value}` dicts) so that a config
dumps back to the YAML a person wrote; `parameters.py` interprets them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
)

from branchmerge.errors import BranchmergeError, describe, validation_error

DTypeName = Literal["float32", "float16", "bfloat16"]

_SETTING_HELP = (
    "must be a number, true/false, a list of numbers (a gradient over the layers) "
    "or a list of {filter, value} rules"
)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_rule_value(v: object) -> object:
    if isinstance(v, bool) or _is_number(v):
        return v
    if isinstance(v, list) and v and all(_is_number(x) for x in v):
        return v
    raise ValueError("a rule's 'value' must be a number, true/false or a non-empty list of numbers")


def _check_rule(rule: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(rule) - {"filter", "value"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in a rule (a rule has 'filter' and 'value')")
    if "value" not in rule:
        raise ValueError("a rule needs a 'value'")
    filt = rule.get("filter")
    if filt is not None and not isinstance(filt, str):
        raise ValueError("a rule's 'filter' must be a string (a substring of the tensor name, or '*')")
    out: dict[str, Any] = {"value": _check_rule_value(rule["value"])}
    if filt is not None:
        out = {"filter": filt, **out}
    return out


def check_setting(v: object) -> object:
    """Accept the value forms mergekit accepts for numbers; a single rule dict becomes a one-rule list."""
    if isinstance(v, bool) or _is_number(v):
        return v
    if isinstance(v, dict):
        return [_check_rule(v)]
    if isinstance(v, list) and v:
        if all(_is_number(x) for x in v):
            return v
        if all(isinstance(x, dict) for x in v):
            return [_check_rule(x) for x in v]
    raise ValueError(_SETTING_HELP)


Setting = Annotated[Any, AfterValidator(check_setting)]


class CalibrationSource(BaseModel):
    """A model's calibration examples: an SFT-example JSONL (`records.SFTExample`), optionally one domain of it."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1)
    domain: str | None = None


def _source(v: object) -> object:
    return {"path": v} if isinstance(v, str) else v


class InputModel(BaseModel):
    """One entry of `models:`: a folder, the per-model parameters (e.g. `weight`, `density`) and, for the
    data-aware methods (regmean, fisher), the model's own calibration examples (a path, or {path, domain})."""

    model_config = ConfigDict(extra="forbid")

    model: str
    parameters: dict[str, Setting] | None = None
    calibration: Annotated[CalibrationSource | None, BeforeValidator(_source)] = None


class CalibrationSettings(BaseModel):
    """How the data-aware methods read each model's `calibration` examples (see `merge/calibration.py`)."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(default=256, ge=1)  # examples per model: a seeded sample of this many (all, if fewer)
    max_length: int = Field(default=1024, ge=2)  # tokens per example; longer ones are cut
    batch_size: int = Field(default=8, ge=1)  # examples per forward pass for the Gram matrices
    seed: int = 0
    cache_dir: str | None = None  # default: calibration-cache/ beside the output folder


class MergeConfig(BaseModel):
    """mergekit's merge YAML, models form. `dtype` is the working precision inputs are rounded to (math is fp32
    either way); `out_dtype` (default: `dtype`, else the inputs' own dtype) is what is written."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        default=None, min_length=1
    )  # a step of a sequence; later steps use it as a model
    merge_method: str
    models: list[InputModel] = Field(min_length=1)
    base_model: str | None = None
    parameters: dict[str, Setting] | None = None
    dtype: DTypeName | None = None
    out_dtype: DTypeName | None = None
    tokenizer_source: str | None = None
    calibration: CalibrationSettings | None = None  # settings for the models' calibration sources

    # Where the config came from (its YAML file), so later errors can name the file. Not part of the config.
    _source: str = PrivateAttr(default="merge config")

    @property
    def source(self) -> str:
        return self._source

    def to_yaml(self) -> str:
        """The config as YAML that `load_merge_config` reads back to an equal config."""
        data = self.model_dump(mode="json", exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


_UNSUPPORTED_KEYS = {
    "slices": "the 'slices' form is not supported yet; list whole models under 'models'",
    "modules": "the 'modules' form is not supported; list whole models under 'models'",
    "tokenizer": "the 'tokenizer' block is not supported; use tokenizer_source (a model folder or 'base')",
    "chat_template": "'chat_template' is not supported; the tokenizer_source's chat template is copied",
}


def _message(err: Any) -> str:
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        if len(loc) == 1 and loc[0] in _UNSUPPORTED_KEYS:
            return _UNSUPPORTED_KEYS[str(loc[0])]
        known: dict[str, Any] = {}
        if len(loc) in (1, 3):
            known = MergeConfig.model_fields if len(loc) == 1 else InputModel.model_fields
        elif loc[-2] == "calibration":  # calibration.x or models[i].calibration.x
            known = CalibrationSettings.model_fields if len(loc) == 2 else CalibrationSource.model_fields
        return f"unknown key (known: {', '.join(known)})" if known else "unknown key"
    return describe(err)


def validate_merge_config(data: object, source: str = "merge config") -> MergeConfig:
    """Validate a parsed document; every problem is reported at once, each naming `source` and the field."""
    if isinstance(data, MergeConfig):
        return data
    if not isinstance(data, dict):
        raise BranchmergeError(f"{source}: expected a mapping with merge_method and models at the top level")
    try:
        return MergeConfig.model_validate(data)
    except ValidationError as e:
        raise validation_error(source, e, _message) from None


def load_merge_configs(path: str | Path) -> list[MergeConfig]:
    """Read a mergekit-style YAML file: one document, or several (`---`) for a sequence of named steps, as
    mergekit-multi reads them. Errors name the file, the document (when there are several) and the field."""
    path = Path(path)
    if not path.is_file():
        raise BranchmergeError(f"{path}: merge config not found")
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except yaml.YAMLError as e:
        raise BranchmergeError(f"{path}: not valid YAML ({e})") from None
    if not docs:
        raise BranchmergeError(f"{path}: the file is empty; expected merge_method and models")
    configs, problems = [], []
    for i, data in enumerate(docs):
        source = str(path) if len(docs) == 1 else f"{path} (document {i + 1})"
        try:
            config = validate_merge_config(data, source)
        except BranchmergeError as e:
            problems.append(str(e))
            continue
        config._source = source
        configs.append(config)
    if problems:
        raise BranchmergeError("\n".join(problems))
    return configs


def load_merge_config(path: str | Path) -> MergeConfig:
    """Read a one-document mergekit-style YAML file; errors name the file and the field."""
    configs = load_merge_configs(path)
    if len(configs) > 1:
        raise BranchmergeError(
            f"{path}: has {len(configs)} documents (a merge sequence); read it with load_merge_configs"
        )
    return configs[0]
