"""Per-tensor parameter values for a method: model setting -> global setting -> default, then type and range.

Runs for every output tensor during validation, so a missing `weight`, a density of 1.3 or a filter rule that
leaves some tensor without a value is reported before any weight is read. Problems come back as
(field, message) pairs; `plan.py` groups identical ones across tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from branchmerge.merge.methods.contract import MergeMethod, ParamSpec, TensorParams
from branchmerge.merge.parameters import ParamValue, evaluate_setting

Problem = tuple[str, str]  # (field, message)


def _lookup(
    name: str, tensor: str, tau: float, levels: Sequence[tuple[str, Mapping[str, Any] | None]]
) -> tuple[ParamValue | None, str]:
    """First level whose setting yields a value for this tensor; returns (value, field it came from)."""
    for prefix, settings in levels:
        if settings and name in settings:
            value = evaluate_setting(settings[name], tensor, tau)
            if value is not None:
                return value, f"{prefix}.{name}"
    return None, ""


def _typed(name: str, spec: ParamSpec, value: ParamValue, field: str, problems: list[Problem]) -> ParamValue:
    if spec.kind == "bool" and not isinstance(value, bool):
        problems.append((field, f"'{name}' must be true or false, got {value}"))
    elif spec.kind == "number" and isinstance(value, bool):
        problems.append((field, f"'{name}' must be a number, got {value}"))
    elif (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
        problems.append((field, f"'{name}' must be between {spec.low} and {spec.high}, got {value}"))
    return value


def _value(
    name: str,
    spec: ParamSpec,
    tensor: str,
    tau: float,
    levels: Sequence[tuple[str, Mapping[str, Any] | None]],
    missing: Problem,
    problems: list[Problem],
) -> ParamValue:
    value, field = _lookup(name, tensor, tau, levels)
    if value is None:
        if spec.default is None:
            problems.append(missing)
            return 0.0
        return spec.default
    return _typed(name, spec, value, field, problems)


def resolve_tensor(
    method: MergeMethod,
    global_settings: Mapping[str, Any] | None,
    model_settings: Sequence[tuple[str, Mapping[str, Any] | None]],
    base: int | None,
    tensor: str,
    tau: float,
) -> tuple[TensorParams, list[Problem]]:
    """Resolve every parameter of `method` for one tensor.

    model_settings[i] = (field prefix such as "models[1].parameters", that model's settings) for input i; the
    base (when the method needs one) gets no per-model parameters.
    """
    problems: list[Problem] = []
    top = ("parameters", global_settings)
    params = {
        name: _value(
            name,
            spec,
            tensor,
            tau,
            [top],
            (f"parameters.{name}", f"{method.name} needs '{name}'; set it under the top-level 'parameters'"),
            problems,
        )
        for name, spec in method.params.items()
    }
    model_params: list[dict[str, ParamValue]] = []
    for i, (prefix, settings) in enumerate(model_settings):
        if i == base:
            model_params.append({})
            continue
        missing = (
            f"{method.name} needs '{{}}' for every model; set it here or under the top-level 'parameters'"
        )
        model_params.append(
            {
                name: _value(
                    name,
                    spec,
                    tensor,
                    tau,
                    [(prefix, settings), top],
                    (f"{prefix}.{name}", missing.format(name)),
                    problems,
                )
                for name, spec in method.model_params.items()
            }
        )
    p = TensorParams(base=base, params=params, model_params=model_params, tensor=tensor)
    if not problems and method.check is not None:
        why = method.check(p)
        if why:
            problems.append(("models", why))
    return p, problems
