"""`merge --explain`: what a config really does, tensor by tensor, before any weight is read — and what looks wrong.

Resolves the config exactly as the merge will (the same `build_plan`), then reports for every tensor, grouped by
layer and kind, the method and the resolved parameters, plus warnings about:
  - filter rules that can never apply, because earlier rules of the same list already match every tensor
    they match (a bare `- value: x` shadows everything after it), and filters that match no tensor at all;
  - parameters that make some tensors' output bit-identical to one input (SLERP t = 0 or 1, one non-zero
    linear weight, all task-vector weights 0, ...);
  - a no-op merge: every tensor is a copy of the same input, so the output is that model.

With `mergeability` (the CLI's default), a step whose base_model and models exist on disk also gets a verdict
on whether its experts will merge (`mergeability.py`); that reads every weight once, one tensor at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from branchmerge.merge.config import MergeConfig
from branchmerge.merge.engine import coerce_configs
from branchmerge.merge.mergeability import Mergeability, config_mergeability
from branchmerge.merge.parameters import layer_index, rule_matches
from branchmerge.merge.plan import MergePlan, TensorJob, build_plan
from branchmerge.merge.sequence import plan_sequence


@dataclass(frozen=True)
class TensorRow:
    tensor: str
    layer: int | None
    kind: str  # the name without the layer prefix, e.g. "self_attn.q_proj.weight"
    params: str  # e.g. "t=0.25" or "copy of expert-a"


@dataclass
class StepExplanation:
    name: str
    method: str
    inputs: list[str]  # labels of the inputs, in the order the method sees them
    rows: list[TensorRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    mergeability: Mergeability | None = None  # None: not asked for, or no base_model / folders yet to be made


def tensor_kind(name: str) -> str:
    index = layer_index(name)
    if index is None:
        return name
    return name.split(f"layers.{index}.", 1)[1]


def _fmt(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return f"{float(v):.4g}" if isinstance(v, int | float) else str(v)


def _describe(plan: MergePlan, job: TensorJob, labels: Sequence[str]) -> str:
    if job.passthrough is not None:
        return f"copy of {labels[job.passthrough]}"
    method, p = plan.method, job.params
    parts = [f"{k}={_fmt(v)}" for k, v in p.params.items() if not method.params[k].ignored]
    for name in method.model_params:
        values = [
            f"{labels[i]}={_fmt(mp[name])}"
            for i, mp in enumerate(p.model_params)
            if i != p.base and name in mp
        ]
        parts.append(f"{name}: " + " ".join(values))
    return ", ".join(parts)


def _rule_lists(cfg: MergeConfig) -> list[tuple[str, list[dict[str, Any]]]]:
    """(field, rules) for every setting given as a list of {filter, value} rules."""
    found = []
    levels: list[tuple[str, Mapping[str, Any] | None]] = [("parameters", cfg.parameters)]
    levels += [(f"models[{i}].parameters", m.parameters) for i, m in enumerate(cfg.models)]
    for prefix, settings in levels:
        for name, setting in (settings or {}).items():
            if isinstance(setting, list) and setting and all(isinstance(r, dict) for r in setting):
                found.append((f"{prefix}.{name}", setting))
    return found


def rule_warnings(cfg: MergeConfig, tensors: Sequence[str]) -> list[str]:
    """Filters that match no tensor, and rules every tensor of which an earlier rule already takes."""
    warnings = []
    for where, rules in _rule_lists(cfg):
        taken: set[str] = set()
        for j, rule in enumerate(rules):
            filt = rule.get("filter")
            matched = {t for t in tensors if rule_matches(filt, t)}
            label = f"{where}[{j}] (filter {filt!r})" if filt is not None else f"{where}[{j}] (no filter)"
            if not matched:
                warnings.append(f"{label}: matches no tensor of these models")
            elif matched <= taken:
                warnings.append(
                    f"{label}: never applies; earlier rules already match every tensor it matches"
                )
            taken |= matched
    return warnings


def _copy_warnings(plan: MergePlan, labels: Sequence[str]) -> list[str]:
    copies: dict[int, list[str]] = {}
    for job in plan.jobs:
        if job.passthrough is not None:
            copies.setdefault(job.passthrough, []).append(job.name)
    n = len(plan.jobs)
    if len(copies) == 1 and len(next(iter(copies.values()))) == n:
        (i,) = copies
        return [f"no-op merge: every tensor is a copy of {labels[i]}, so the output is that model"]
    return [
        f"{len(names)} of {n} tensors are bit-identical copies of {labels[i]} (e.g. '{names[0]}')"
        for i, names in copies.items()
    ]


def explain_plan(plan: MergePlan, name: str = "merge") -> StepExplanation:
    labels = [c.path.name or str(c.path) for c in plan.inputs]
    out = StepExplanation(name, plan.method.name, labels)
    for job in plan.jobs:
        out.rows.append(
            TensorRow(job.name, layer_index(job.name), tensor_kind(job.name), _describe(plan, job, labels))
        )
    out.warnings = rule_warnings(plan.config, [j.name for j in plan.jobs]) + _copy_warnings(plan, labels)
    return out


def explain_merge(
    config: MergeConfig | dict | Sequence[MergeConfig | dict] | str | Path,
    *,
    mergeability: bool = False,
) -> list[StepExplanation]:
    """One explanation per step (one for a plain config); raises BranchmergeError on an invalid config.

    mergeability: also judge each step's experts against its base_model (reads their weights)."""
    configs = coerce_configs(config)
    if len(configs) == 1 and configs[0].name is None:
        steps = [explain_plan(build_plan(configs[0], configs[0].source))]
        step_configs = [configs[0]]
    else:
        seq = plan_sequence(configs, Path("<output>"), Path("<steps>"))
        steps = [explain_plan(plan, name) for plan, name in zip(seq.plans, seq.names, strict=True)]
        step_configs = seq.steps
    if mergeability:
        for step, cfg in zip(steps, step_configs, strict=True):
            step.mergeability = config_mergeability(cfg)
    return steps
