"""Linear merge: a weighted average of the models' weights.

Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy without
increasing inference time", ICML 2022, Sec. 2: the uniform soup theta = (1/k) sum_i theta_i. With per-model
weights w_i, as mergekit's `linear`:

    theta = sum_i w_i theta_i / sum_i w_i      (normalize: true, the default)     (1)
    theta = sum_i w_i theta_i                  (normalize: false)                 (2)

YAML: per model `weight` (required; may be given once under top-level `parameters`), global `normalize`.
The base_model is not an input unless it is listed under `models`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from branchmerge.merge.methods.chunks import map_chunks
from branchmerge.merge.methods.contract import MergeMethod, ParamSpec, TensorParams


def linear(
    thetas: Sequence[torch.Tensor],
    w: Sequence[float],
    normalize: bool = True,
    out_dtype: torch.dtype = torch.float32,
    sink: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor | None:
    """Eq. (1)/(2), accumulated in fp32 one model at a time, chunk by chunk (`chunks.py`)."""
    total = sum(w)

    def average(sl: slice, chunk: list[torch.Tensor]) -> torch.Tensor:
        theta = torch.zeros_like(chunk[0])
        for theta_i, w_i in zip(chunk, w, strict=True):
            theta.add_(theta_i, alpha=w_i)
        if normalize:
            theta /= total
        return theta

    return map_chunks(thetas, average, out_dtype, sink)


def _apply(thetas: Sequence[torch.Tensor], p: TensorParams) -> torch.Tensor | None:
    w = [float(mp["weight"]) for mp in p.model_params]
    return linear(thetas, w, bool(p.params["normalize"]), p.out_dtype, p.sink)


def _check(p: TensorParams) -> str | None:
    w = [float(mp["weight"]) for mp in p.model_params]
    if p.params["normalize"] and sum(w) == 0:
        return "the weights sum to 0, so normalize would divide by 0; change them or set normalize: false"
    return None


def _passthrough(p: TensorParams) -> int | None:
    """One model carries all the weight: the average *is* that model (exactly, not up to rounding)."""
    w = [float(mp["weight"]) for mp in p.model_params]
    nonzero = [i for i, w_i in enumerate(w) if w_i != 0]
    if len(nonzero) != 1:
        return None
    i = nonzero[0]
    return i if p.params["normalize"] or w[i] == 1 else None


METHOD = MergeMethod(
    name="linear",
    apply=_apply,
    params={"normalize": ParamSpec(kind="bool", default=True, help="divide by the sum of the weights")},
    model_params={"weight": ParamSpec(help="this model's weight")},
    check=_check,
    passthrough=_passthrough,
    streams=True,
    summary="weighted average of the models",
)
