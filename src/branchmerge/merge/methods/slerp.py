"""SLERP: spherical linear interpolation between the base model and one other model, tensor by tensor.

Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985, the Slerp formula:

    Omega = arccos(<theta_0 / |theta_0|, theta_1 / |theta_1|>)                         (1)
    slerp(theta_0, theta_1; t) = sin((1 - t) Omega) / sin Omega * theta_0
                               + sin(t Omega) / sin Omega * theta_1                    (2)

theta_0 is the base_model (t = 0 gives it), theta_1 the other model (t = 1 gives it). As in mergekit: the
direction uses whole-tensor norms (a norm <= 1e-8 is left unnormalised), the cosine is clamped to [-1, 1],
nearly parallel tensors (|cos| > 0.9995, where sin Omega ~ 0) fall back to lerp (1 - t) theta_0 + t theta_1,
and the coefficients of (2) multiply the raw tensors, so norms are interpolated too.

YAML: global `t` (a number, a layer gradient or filter rules). A `t` under one model is an error here;
mergekit silently ignores it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from branchmerge.merge.methods.chunks import BLOCK, gram, map_chunks, scratch, widen_small
from branchmerge.merge.methods.contract import MergeMethod, ParamSpec, TensorParams

DOT_THRESHOLD = 0.9995
EPS = 1e-8


def slerp(
    t: float,
    theta_0: torch.Tensor,
    theta_1: torch.Tensor,
    out_dtype: torch.dtype = torch.float32,
    sink: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor | None:
    """Eq. (2) in fp32 chunk by chunk (`chunks.py`; norms and dot summed in fp64), with the lerp fallback for
    nearly parallel tensors."""
    theta_0, theta_1 = widen_small([theta_0, theta_1])
    squared_0, squared_1, dot = gram(theta_0, theta_1)
    norm_0, norm_1 = math.sqrt(squared_0), math.sqrt(squared_1)
    # <theta_0/|theta_0|, theta_1/|theta_1|> without materialising the normalised copies.
    cos = dot / ((norm_0 if norm_0 > EPS else 1.0) * (norm_1 if norm_1 > EPS else 1.0))
    cos = min(1.0, max(-1.0, cos))
    if abs(cos) > DOT_THRESHOLD:
        s_0, s_1 = 1 - t, t
    else:
        omega = math.acos(cos)  # (1)
        sin_omega = math.sin(omega)
        s_0 = math.sin((1 - t) * omega) / sin_omega  # (2)
        s_1 = math.sin(t * omega) / sin_omega
    return _combine(theta_0, theta_1, s_0, s_1, out_dtype, sink)


def _combine(
    theta_0: torch.Tensor,
    theta_1: torch.Tensor,
    s_0: float,
    s_1: float,
    out_dtype: torch.dtype,
    sink: Callable[[torch.Tensor], None] | None,
) -> torch.Tensor | None:
    """s_0 * theta_0 + s_1 * theta_1 by `map_chunks` a block at a time, each product widened and scaled in a
    scratch buffer: the same fp32 operations in the same order, without a fresh temporary per operation."""

    def combine(sl: slice, parts: list[torch.Tensor]) -> torch.Tensor:
        a = scratch("slerp0", sl.stop - sl.start, parts[0].device)
        b = scratch("slerp1", sl.stop - sl.start, parts[0].device)
        _scaled(parts[0], s_0, a)
        _scaled(parts[1], s_1, b)
        return a.add_(b)

    return map_chunks([theta_0, theta_1], combine, out_dtype, sink, BLOCK, widen=False)


def _scaled(part: torch.Tensor, s: float, buffer: torch.Tensor) -> None:
    """buffer = fp32(part) * s: an fp32 part is multiplied straight into the buffer, another widened there first."""
    if part.dtype == torch.float32:
        torch.mul(part, s, out=buffer)
    else:
        buffer.copy_(part).mul_(s)


def _apply(thetas: Sequence[torch.Tensor], p: TensorParams) -> torch.Tensor | None:
    assert p.base is not None
    other = 1 - p.base
    return slerp(float(p.params["t"]), thetas[p.base], thetas[other], p.out_dtype, p.sink)


def _passthrough(p: TensorParams) -> int | None:
    assert p.base is not None
    t = p.params["t"]
    if t == 0:
        return p.base
    if t == 1:
        return 1 - p.base
    return None


METHOD = MergeMethod(
    name="slerp",
    apply=_apply,
    params={"t": ParamSpec(help="0 = base_model, 1 = the other model")},
    needs_base=True,
    n_inputs=2,
    passthrough=_passthrough,
    streams=True,
    summary="spherical interpolation between base_model and one other model",
)
