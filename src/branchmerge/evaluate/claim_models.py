"""The models of a Branch-Merge run as the claim sees them (`ModelInfo`): what each is (base, expert of a domain,
mixture, merge, other), what it was made from, and its training compute; with the checks on a set of them and the
compute of a model together with every model it was made from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from branchmerge.errors import BranchmergeError

Kind = Literal["base", "expert", "mixture", "merge", "other"]


class ModelInfo(BaseModel):
    """What the claim needs to know about a model besides its samples. Compute is the model's own (its training
    run, or the merge itself); `parents` are the models it was made from (an expert: the base)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Kind
    domain: str | None = None  # an expert's own domain
    parents: list[str] = Field(default_factory=list)
    train_tokens: int | None = Field(None, ge=0)  # non-padding tokens seen over all steps; None: not recorded
    loss_tokens: int | None = Field(None, ge=0)  # tokens the loss was taken on
    wall_s: float | None = Field(None, ge=0)


@dataclass(frozen=True)
class Compute:
    """A model's own compute plus that of every model it was made from (each counted once); None: unknown."""

    train_tokens: int | None
    loss_tokens: int | None
    wall_s: float | None


def check_models(models: Sequence[ModelInfo]) -> dict[str, ModelInfo]:
    """name -> descriptor; every problem (duplicate names, unknown parents, cycles, two bases) in one error."""
    by_name: dict[str, ModelInfo] = {}
    errors = []
    for m in models:
        if m.name in by_name:
            errors.append(f"models: '{m.name}' is described twice")
        by_name[m.name] = m
    for m in models:
        errors += [
            f"models: {m.name}.parents: '{p}' is not a described model (known: {', '.join(sorted(by_name))})"
            for p in m.parents
            if p not in by_name
        ]
        if m.kind == "merge" and not m.parents:
            errors.append(f"models: {m.name}.parents: a merge needs the models it was made from")
    bases = [m.name for m in models if m.kind == "base"]
    if len(bases) > 1:
        errors.append(f"models: more than one model of kind base ({', '.join(bases)})")
    if not errors:
        for m in models:
            if m.name in ancestors(m.name, by_name):
                errors.append(f"models: {m.name}.parents: '{m.name}' is its own ancestor")
    if errors:
        raise ValueError("\n".join(errors))
    return by_name


def ancestors(name: str, models: dict[str, ModelInfo]) -> list[str]:
    """Every model `name` was made from, directly or through others, each once, nearest first."""
    out: list[str] = []
    todo = list(models[name].parents)
    while todo:
        p = todo.pop(0)
        if p not in out:
            out.append(p)
            if p != name:
                todo += models[p].parents
    return out


def total_compute(name: str, models: dict[str, ModelInfo]) -> Compute:
    """Own compute plus every ancestor's; a base (trained before this run) counts 0 unless its descriptor says."""

    def total(values: list[float | int | None]) -> float | None:
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    chain = [models[name], *(models[a] for a in ancestors(name, models))]
    own = [m for m in chain if m.kind != "base"]
    tokens = total([m.train_tokens if m.kind != "merge" else 0 for m in own])
    loss = total([m.loss_tokens if m.kind != "merge" else 0 for m in own])
    wall = total([m.wall_s for m in own])
    return Compute(None if tokens is None else int(tokens), None if loss is None else int(loss), wall)


def load_models(path: str | Path) -> list[ModelInfo]:
    """Descriptors from a YAML or JSON file: a list of {name, kind, domain, parents, train_tokens, loss_tokens,
    wall_s}. Every problem is reported at once, naming the file and the field; then `check_models` runs."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise BranchmergeError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if not isinstance(data, list):
        raise BranchmergeError(f"{path}: expected a list of models, each with at least a name and a kind")
    models, errors = [], []
    for i, row in enumerate(data):
        try:
            models.append(ModelInfo.model_validate(row))
        except ValidationError as e:
            for err in e.errors():
                where = ".".join(str(x) for x in err["loc"]) or "(model)"
                errors.append(f"{path}: [{i}].{where}: {err['msg']}")
    if not errors:
        try:
            check_models(models)
        except ValueError as e:
            errors += [f"{path}: {line}" for line in str(e).splitlines()]
    if errors:
        raise BranchmergeError("\n".join(errors))
    return models
