"""The contract every merge method fills: a function of fp32 tensors and typed, already-resolved parameters.

The engine resolves each parameter for each tensor (gradients, filters, model -> global -> default) before any
weight is read, so a method only sees plain numbers. The spec tables below are what the engine validates the
config against: unknown names, missing required values and out-of-range values are all caught up front.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from branchmerge.merge.parameters import ParamValue


@dataclass(frozen=True)
class ParamSpec:
    """One parameter a method reads. `default=None` means required."""

    kind: Literal["number", "bool"] = "number"
    default: ParamValue | None = None
    low: float | None = None
    high: float | None = None
    ignored: bool = False  # accepted so mergekit configs load, but has no effect here
    help: str = ""


@dataclass(frozen=True)
class TensorParams:
    """Parameters of one output tensor: `params` are global, `model_params[i]` belong to input i."""

    base: int | None
    params: Mapping[str, ParamValue]
    model_params: Sequence[Mapping[str, ParamValue]]
    tensor: str = ""  # the output tensor's name: seeds random methods (DARE) per tensor, whatever the order
    out_dtype: torch.dtype = torch.float32  # the dtype it is saved in: a method may return it directly
    # Set by the engine for the largest tensors of a `streams` method: write the output through it, chunk by
    # chunk in order, instead of returning it (the method then returns None).
    sink: Callable[[torch.Tensor], None] | None = field(default=None, compare=False, repr=False)
    # For a method with `calibration`: stats[i] is input i's statistic for this tensor, read from its
    # calibration data (`calibration.py`), or None where the method has none for it (RegMean: not a Linear).
    stats: Sequence[torch.Tensor] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method.

    apply: input tensors (in input order, in the working dtype: bf16 as stored, or the config's `dtype`) and the
        tensor's parameters -> the merged tensor, computed in fp32 (at least) and returned in fp32 or directly
        in `params.out_dtype` (chunked methods do, see `chunks.py`). It must not modify its inputs.
        With `streams`, inputs may be `checkpoint.LazyTensor`s (read chunk by chunk from disk) and, when
        `params.sink` is set, the output goes through it and apply returns None.
    params / model_params: global and per-model parameter specs. A per-model parameter may also be given under
        the top-level `parameters`, as a default for every model (as in mergekit).
    needs_base: the base_model is an input (appended if not listed) and gets no per-model parameters.
    n_inputs: exact number of distinct input models including the base, or None for "one or more".
    min_inputs: the least number of distinct inputs including the base (Model Stock: 3).
    check: from the parameters alone, why this tensor cannot be merged (e.g. weights summing to 0 under
        normalize), or None; run for every tensor during validation.
    passthrough: from the parameters alone, the input whose tensor *is* the output (e.g. SLERP at t = 0), so
        the engine reads only that tensor and copies its bytes; None when the output must be computed.
    calibration: the statistic the method reads from data (see the field's comment); None for weight-only methods.
    """

    name: str
    apply: Callable[[Sequence[torch.Tensor], TensorParams], torch.Tensor | None]
    params: Mapping[str, ParamSpec] = field(default_factory=dict)
    model_params: Mapping[str, ParamSpec] = field(default_factory=dict)
    needs_base: bool = False
    n_inputs: int | None = None
    min_inputs: int = 1
    check: Callable[[TensorParams], str | None] | None = None
    passthrough: Callable[[TensorParams], int | None] | None = None
    streams: bool = False  # reads its inputs only through `chunks.py` and honours `TensorParams.sink`
    # The statistic the method needs from each model's calibration examples (`calibration.py`): "gram" (the
    # Gram matrix of each nn.Linear's inputs, RegMean) or "fisher" (the diagonal empirical Fisher). Such a
    # method needs a calibration source per model and gets the statistics in `TensorParams.stats`.
    calibration: Literal["gram", "fisher"] | None = None
    summary: str = ""
