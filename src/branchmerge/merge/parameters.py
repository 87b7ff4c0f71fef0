"""How a parameter's YAML value becomes a number for one tensor (mergekit 0.1.5 semantics; README, "Merging").

- a scalar is used as is;
- a list of numbers is a gradient over the layers: layer i of n sits at tau = i / (n - 1) (tau = 1 when
  n = 1) and the value is interpolated linearly between the two neighbouring points;
- a list of `{filter, value}` rules is scanned in order and the first rule whose filter is absent, `"*"` or a
  case-sensitive substring of the tensor name wins; its value is then evaluated as above. No match gives None,
  so the lookup falls through to the next level (model -> global -> default).

Tensors outside the layers (embeddings, final norm, lm_head) are evaluated at tau = 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ParamValue = float | bool

# `model.layers.7.mlp...` -> 7; also matches `model.language_model.layers.7.` in multimodal checkpoints.
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_index(tensor_name: str) -> int | None:
    """The decoder layer a tensor belongs to, or None for embeddings, final norm and lm_head."""
    m = _LAYER.search(tensor_name)
    return int(m.group(1)) if m else None


def layer_tau(index: int | None, n_layers: int) -> float:
    """Position of a layer along a gradient, in [0, 1]; tensors outside the layers sit at 0."""
    if index is None:
        return 0.0
    return index / (n_layers - 1) if n_layers > 1 else 1.0


def interpolate_gradient(points: Sequence[float], tau: float) -> float:
    """Piecewise-linear value of `points` (spread evenly over [0, 1]) at `tau`.

    Same arithmetic order as mergekit so the values agree to the last bit: s = tau * (k - 1), i0 = int(s).
    """
    scaled = tau * (len(points) - 1)
    i0 = int(scaled)
    i1 = min(len(points) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * points[i0] + frac * points[i1]


def rule_matches(filter_: str | None, tensor_name: str) -> bool:
    return filter_ is None or filter_ == "*" or filter_ in tensor_name


def evaluate_setting(setting: object, tensor_name: str, tau: float) -> ParamValue | None:
    """The value of a validated setting (see `config.check_setting`) for one tensor, or None if no rule matched."""
    if isinstance(setting, bool):
        return setting
    if isinstance(setting, int | float):
        return float(setting)
    assert isinstance(setting, list), setting  # validated on entry
    if all(isinstance(x, dict) for x in setting):
        for rule in setting:
            if rule_matches(rule.get("filter"), tensor_name):
                return evaluate_setting(rule["value"], tensor_name, tau)
        return None
    return interpolate_gradient([float(x) for x in setting], tau)
