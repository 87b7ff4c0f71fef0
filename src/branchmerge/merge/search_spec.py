"""The merge-search SPEC: a merge template whose parameter values may be search spaces, an objective, a budget.

    template:      # a mergekit config; a parameter value, a rule's value or a gradient point may be a space
      merge_method: slerp
      base_model: ./expert-a
      models: [{model: ./expert-a}, {model: ./expert-b}]
      parameters:
        t: [{filter: embed_tokens, value: 1}, {value: {gradient: 5, low: 0.0, high: 1.0}}]
    objective: {kind: loss, dev: {add: dev-add.jsonl, sort: dev-sort.jsonl}, max_examples: 64}
    trials: 20
    seed: 0

Spaces: `{low, high}` a float (`log: true` for a log scale, `step: s` for a grid; integer low, high and step
give integers); `{choices: [...]}` one of the listed values (numbers, true/false or whole gradients);
`{gradient: k, low, high}` k searched points of a layer gradient. `order: [a, b, c]` in place of
`models`/`base_model` merges the listed models pairwise in a searched order, ((x & y) & z), with the
template's method and (shared) parameters at every step; the later steps use `run_merge`'s list-of-steps form.

Paths (models, dev sets) are relative to the working directory, as in `branchmerge merge`. This module checks
the document's shape and every space; `search_check.py` checks it against the disk before any trial.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from branchmerge.errors import BranchmergeError, validation_error
from branchmerge.merge.search_space import (
    SPACE_KEYS,
    ChoiceSpace,
    GradientSpace,
    OrderSpace,
    RangeSpace,
    Slot,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LossObjective(_Strict):
    """Mean assistant-token loss of the merged model on each domain's SFTExample JSONL (lower is better)."""

    kind: Literal["loss"]
    dev: dict[str, str] = Field(min_length=1)  # domain -> SFTExample JSONL
    max_examples: int = Field(64, ge=1)  # the first N of each file
    batch_size: int = Field(8, ge=1)
    device: str | None = None  # default: cuda when available, else cpu


class EvalObjective(_Strict):
    """Greedy graded evaluation on each domain's Problem JSONL, scored by accuracy (higher is better)."""

    kind: Literal["eval"]
    problems: dict[str, str] = Field(min_length=1)  # domain -> Problem JSONL
    max_examples: int = Field(64, ge=1)
    max_tokens: int = Field(256, ge=1)
    batch_size: int = Field(64, ge=1)


Objective = Annotated[LossObjective | EvalObjective, Field(discriminator="kind")]


class SearchSpec(_Strict):
    template: dict[str, Any]
    objective: Objective
    trials: int = Field(20, ge=1)  # completed trials wanted in the out folder, counting earlier runs
    seed: int = 0
    sampler: Literal["tpe", "random"] = "tpe"
    keep: Literal["none", "best", "all"] = "none"  # merged weights kept under <out>/trials/<n>/model
    baselines: bool = True  # score every input model once, unmerged

    _source: str = PrivateAttr(default="search spec")

    @property
    def source(self) -> str:
        return self._source

    def parsed_template(self) -> Template:
        return Template.parse(self.template, self.source)

    @property
    def domains(self) -> list[str]:
        o = self.objective
        return list(o.dev if isinstance(o, LossObjective) else o.problems)

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        return "minimize" if isinstance(self.objective, LossObjective) else "maximize"


def _is_space(v: object) -> bool:
    return isinstance(v, dict) and bool(SPACE_KEYS & set(v)) and not {"value", "filter"} & set(v)


def _space(v: dict[str, Any], path: str, in_list: bool, problems: list[str]) -> Slot | dict[str, Any]:
    kind: type[RangeSpace | ChoiceSpace | GradientSpace]
    kind = GradientSpace if "gradient" in v else ChoiceSpace if "choices" in v else RangeSpace
    if in_list and kind is GradientSpace:
        problems.append(f"{path}: a gradient point must be a number or a {{low, high}} / {{choices}} space")
        return v
    try:
        return Slot(path, kind.model_validate(v))
    except ValidationError as e:
        problems += [f"{path}{_loc(err['loc'])}: {_msg(err)}" for err in e.errors()]
        return v


def _loc(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc if p not in ("int", "float"))


def _msg(err: Any) -> str:
    return str(err["ctx"]["error"]) if err["type"] == "value_error" else str(err["msg"])


def _parse_value(v: Any, path: str, problems: list[str], in_list: bool = False) -> Any:
    """A parameter value with every space dict replaced by a Slot; other values are left for MergeConfig."""
    if _is_space(v):
        return _space(v, path, in_list, problems)
    if isinstance(v, dict) and "value" in v:  # a {filter, value} rule
        return {**v, "value": _parse_value(v["value"], f"{path}.value", problems)}
    if isinstance(v, list):
        return [_parse_value(x, f"{path}[{i}]", problems, in_list=True) for i, x in enumerate(v)]
    return v


def _parse_parameters(block: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(block, dict):
        return block  # MergeConfig reports the shape
    return {k: _parse_value(v, f"{prefix}.{k}", problems) for k, v in block.items()}


def _parse_order(order: Any, body: dict[str, Any], problems: list[str]) -> Slot | None:
    if not isinstance(order, list) or len(order) < 2 or not all(isinstance(m, str) for m in order):
        problems.append("order: must be a list of two or more model folders")
        return None
    if len(set(order)) != len(order):
        problems.append("order: a model is listed twice")
    taken = [m for m in order if m in {f"step{k}" for k in range(1, len(order))}]
    if taken:
        problems.append(f"order: '{taken[0]}' is the name of a merge step; write it as ./{taken[0]}")
    for key in ("models", "base_model"):
        if key in body:
            problems.append(
                f"{key}: give either 'order' (a searched sequence) or models/base_model, not both"
            )
    return Slot("order", OrderSpace(tuple(order)))


@dataclass(frozen=True)
class Template:
    """A merge config with Slots where the spec has spaces; `fill` turns it into concrete merge configs."""

    body: dict[str, Any]
    order: Slot | None
    slots: list[Slot]

    @staticmethod
    def parse(data: dict[str, Any], source: str) -> Template:
        problems: list[str] = []
        body = {k: v for k, v in data.items() if k != "order"}
        if "parameters" in body:
            body["parameters"] = _parse_parameters(body["parameters"], "parameters", problems)
        if isinstance(body.get("models"), list):
            body["models"] = [
                {**m, "parameters": _parse_parameters(m["parameters"], f"models[{i}].parameters", problems)}
                if isinstance(m, dict) and "parameters" in m
                else m
                for i, m in enumerate(body["models"])
            ]
        order = _parse_order(data["order"], body, problems) if "order" in data else None
        if problems:
            raise BranchmergeError("\n".join(f"{source}: template.{p}" for p in problems))
        slots = [*([order] if order else []), *_slots(body)]
        return Template(body, order, slots)

    def fill(self, pick: Callable[[Slot], Any]) -> dict[str, Any] | list[dict[str, Any]]:
        """The concrete config: each slot replaced by `pick(slot)`; an order gives a sequence of steps."""
        body = _replace(copy.deepcopy(self.body), pick)
        if self.order is None:
            return body
        return sequence(body, list(pick(self.order)))

    def input_models(self) -> list[str]:
        """The model folders the merge reads, each once, in template order."""
        if self.order is not None:
            assert isinstance(self.order.space, OrderSpace)
            return list(self.order.space.models)
        models = self.body.get("models")
        names = [m.get("model") for m in models if isinstance(m, dict)] if isinstance(models, list) else []
        names.append(self.body.get("base_model"))
        return list(dict.fromkeys(n for n in names if isinstance(n, str)))


def _slots(v: Any) -> list[Slot]:
    if isinstance(v, Slot):
        return [v]
    if isinstance(v, dict):
        return [s for x in v.values() for s in _slots(x)]
    if isinstance(v, list):
        return [s for x in v for s in _slots(x)]
    return []


def _replace(v: Any, pick: Callable[[Slot], Any]) -> Any:
    if isinstance(v, Slot):
        return pick(v)
    if isinstance(v, dict):
        return {k: _replace(x, pick) for k, x in v.items()}
    if isinstance(v, list):
        return [_replace(x, pick) for x in v]
    return v


def sequence(body: dict[str, Any], order: list[str]) -> dict[str, Any] | list[dict[str, Any]]:
    """((order[0] & order[1]) & order[2]) ...: each step merges the previous result (its base) with the next
    model. One step is a plain config; more are `run_merge`'s list form, where a step's `name` stands for its
    output in later steps."""
    steps: list[dict[str, Any]] = []
    prev = order[0]
    for k, model in enumerate(order[1:], start=1):
        step = {"name": f"step{k}", "merge_method": body.get("merge_method"), "base_model": prev}
        step |= {"models": [{"model": prev}, {"model": model}]}
        steps.append(step | {key: v for key, v in body.items() if key not in step})
        prev = f"step{k}"
    if len(steps) == 1:
        return {k: v for k, v in steps[0].items() if k != "name"}
    return steps


def parse_search_spec(data: object, source: str = "search spec") -> SearchSpec:
    """Validate a parsed SPEC document; every problem is reported at once, each naming `source` and the field."""
    if not isinstance(data, dict):
        raise BranchmergeError(f"{source}: expected a mapping with template and objective at the top level")
    problems = []
    if isinstance(data.get("template"), dict):
        try:
            Template.parse(data["template"], source)  # bad spaces and `order`, reported with the rest
        except BranchmergeError as e:
            problems.append(str(e))
    try:
        spec = SearchSpec.model_validate(data)
    except ValidationError as e:
        problems.insert(0, str(validation_error(source, e)))
    if problems:
        raise BranchmergeError("\n".join(problems))
    spec._source = source
    return spec


def load_search_spec(path: str | Path) -> SearchSpec:
    """Read a SPEC YAML file; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise BranchmergeError(f"{path}: search spec not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise BranchmergeError(f"{path}: not valid YAML ({e})") from None
    return parse_search_spec(data, str(path))
