"""The merge configs mergekit_parity.py runs through both tools: per method, a few parameter forms.

Each builder takes the base and two experts (folder paths) and returns the mergekit YAML content without
`dtype`; the dtype variants are added by `cases()`:
  - bf16:      dtype bfloat16 (mergekit rounds inputs to bf16 and, for some methods, computes in bf16);
  - fp32:      dtype float32 (fp32 math, fp32 output);
  - fp32-math: dtype float32, out_dtype bfloat16 (fp32 math, bf16 output: isolates the arithmetic's precision).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

GRADIENT = [0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1]
DTYPES = {
    "bf16": {"dtype": "bfloat16"},
    "fp32": {"dtype": "float32"},
    "fp32-math": {"dtype": "float32", "out_dtype": "bfloat16"},
}
# mergekit's method -> ours when the names differ (ours `arcee_fusion` is the TinyR1 paper's formula).
OURS_NAME = {"arcee_fusion": "arcee_fusion_mergekit"}

Builder = Callable[[str, str, str], dict]


def _models(*entries: tuple[str, dict | None]) -> list[dict]:
    return [{"model": m, **({"parameters": p} if p else {})} for m, p in entries]


def _pair(method: str, params: dict | None = None) -> Builder:
    """Methods of the base and one other model (slerp, arcee_fusion)."""
    return lambda b, e1, e2: {
        "merge_method": method,
        "base_model": b,
        "models": _models((b, None), (e1, None)),
        **({"parameters": params} if params else {}),
    }


def _task_vectors(method: str, p1: dict, p2: dict, params: dict | None = None) -> Builder:
    """Methods of task vectors against the base (task_arithmetic, ties, dare_*)."""
    return lambda b, e1, e2: {
        "merge_method": method,
        "base_model": b,
        "models": _models((e1, p1), (e2, p2)),
        **({"parameters": params} if params else {}),
    }


def _linear(p1: dict, p2: dict) -> Builder:
    return lambda b, e1, e2: {"merge_method": "linear", "models": _models((e1, p1), (e2, p2))}


def _model_stock(params: dict | None = None) -> Builder:
    return lambda b, e1, e2: {
        "merge_method": "model_stock",
        "base_model": b,
        "models": _models((b, None), (e1, None), (e2, None)),
        **({"parameters": params} if params else {}),
    }


ATTN_RULES = [{"filter": "self_attn", "value": 0.8}, {"filter": "mlp", "value": [0.2, 0.9]}, {"value": 0.5}]
PINNED_T = [{"filter": "embed_tokens", "value": 1}, {"filter": "lm_head", "value": 1}, {"value": GRADIENT}]

# method -> config name -> builder. Names: scalar numbers, a layer gradient, {filter, value} rules.
CONFIGS: dict[str, dict[str, Builder]] = {
    "linear": {
        "scalar": _linear({"weight": 0.6}, {"weight": 0.4}),
        "gradient": _linear({"weight": [1, 0.5, 0]}, {"weight": [0, 0.5, 1]}),
        "rules": _linear({"weight": ATTN_RULES}, {"weight": 0.5}),
    },
    "slerp": {
        "scalar": _pair("slerp", {"t": 0.4}),
        "gradient": _pair("slerp", {"t": GRADIENT}),
        "rules": _pair("slerp", {"t": PINNED_T}),  # the two-teacher recipe: t = 1 on the embeddings
    },
    "task_arithmetic": {
        "scalar": _task_vectors("task_arithmetic", {"weight": 0.7}, {"weight": 0.3}),
        "gradient": _task_vectors(
            "task_arithmetic", {"weight": [0.2, 1.0]}, {"weight": 0.5}, {"lambda": 0.9}
        ),
        "rules": _task_vectors("task_arithmetic", {"weight": ATTN_RULES}, {"weight": 0.5}),
    },
    "ties": {
        "scalar": _task_vectors("ties", {"weight": 0.5, "density": 0.5}, {"weight": 0.5, "density": 0.5}),
        "gradient": _task_vectors(
            "ties", {"weight": 0.5, "density": [0.3, 0.8]}, {"weight": [1, 0.5], "density": 0.5}
        ),
        "rules": _task_vectors(
            "ties",
            {"weight": 0.6, "density": [{"filter": "self_attn", "value": 0.3}, {"value": 0.7}]},
            {"weight": 0.4, "density": 0.5},
        ),
    },
    "model_stock": {"default": _model_stock(), "filter_wise": _model_stock({"filter_wise": True})},
    "arcee_fusion": {"default": _pair("arcee_fusion")},
}

# Ours-only settings tried as extra rows (mergekit would reject the parameter).
OURS_EXTRA: dict[str, dict[str, dict]] = {"ties": {"argsort_ties": {"argsort_ties": True}}}

# DARE is random: compared by statistics on one expert in fp32, where "kept" is exactly out != base.
DARE_DENSITY = 0.5
DARE_WEIGHT = 0.5
DARE: dict[str, Builder] = {
    m: lambda b, e1, e2, m=m: {  # type: ignore[misc]
        "merge_method": m,
        "base_model": b,
        "models": _models((e1, {"weight": DARE_WEIGHT, "density": DARE_DENSITY})),
        "dtype": "float32",
    }
    for m in ("dare_linear", "dare_ties")
}


@dataclass
class Case:
    method: str  # mergekit's name
    ours_method: str
    config: str  # e.g. "gradient" or "scalar/argsort_ties"
    variant: str  # tied / untied
    dtype: str  # bf16 / fp32 / fp32-math
    mergekit_yaml: dict
    ours_yaml: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.method}-{self.config.replace('/', '+')}-{self.variant}-{self.dtype}"

    @property
    def mergekit_key(self) -> str:
        """Rows that differ only in ours-only settings share one mergekit run."""
        return f"{self.method}-{self.config.split('/')[0]}-{self.variant}-{self.dtype}"


def cases(methods: list[str], families: dict[str, tuple[str, str, str]]) -> list[Case]:
    out = []
    for method in methods:
        for config, build in CONFIGS[method].items():
            for variant, (b, e1, e2) in families.items():
                for dtype, dtype_keys in DTYPES.items():
                    mk = {**build(b, e1, e2), **dtype_keys}
                    ours = {**mk, "merge_method": OURS_NAME.get(method, method)}
                    out.append(Case(method, ours["merge_method"], config, variant, dtype, mk, ours))
                    for extra_name, extra in OURS_EXTRA.get(method, {}).items():
                        extra_ours = {**ours, "parameters": {**ours.get("parameters", {}), **extra}}
                        name = f"{config}/{extra_name}"
                        out.append(Case(method, ours["merge_method"], name, variant, dtype, mk, extra_ours))
    return out
