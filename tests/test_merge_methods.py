"""Merge math and parameter resolution, checked against hand-computed values and independent references."""

from __future__ import annotations

import math

import pytest
import torch

from branchmerge.merge.methods import METHODS
from branchmerge.merge.methods.arcee_fusion import arcee_fusion, exact_quantile
from branchmerge.merge.methods.linear import linear
from branchmerge.merge.methods.slerp import slerp
from branchmerge.merge.methods.task_vector import TaskVectorSettings, keep_top_magnitude, task_vector_merge
from branchmerge.merge.parameters import evaluate_setting, interpolate_gradient, layer_index, layer_tau
from branchmerge.merge.resolve import resolve_tensor

NINE = [0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1]


# ---- parameter resolution -------------------------------------------------------------------------------


def test_gradient_two_layers_hits_the_end_points():
    assert [interpolate_gradient(NINE, layer_tau(i, 2)) for i in range(2)] == [0, 1]


def test_gradient_five_layers_by_hand():
    # tau = 0, .25, .5, .75, 1 -> s = 0, 2, 4, 6, 8 (exact points of the 9-point list)
    got = [interpolate_gradient(NINE, layer_tau(i, 5)) for i in range(5)]
    assert got == pytest.approx([0, 0.2, 0.5, 0.8, 1], abs=1e-12)


def test_gradient_between_points():
    # 4 layers, layer 1: tau = 1/3, s = 8/3 -> 2/3 of the way from .2 to .3
    assert interpolate_gradient(NINE, layer_tau(1, 4)) == pytest.approx(0.2 + (2 / 3) * 0.1)
    assert interpolate_gradient([1.0, 3.0], 0.25) == pytest.approx(1.5)


def test_layer_tau_single_layer_and_outside_layers():
    assert layer_tau(0, 1) == 1.0
    assert layer_index("model.layers.12.mlp.up_proj.weight") == 12
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert layer_index(name) is None
        assert layer_tau(layer_index(name), 28) == 0.0


def test_scalar_and_gradient_settings():
    assert evaluate_setting(0.25, "model.layers.1.mlp.up_proj.weight", 1.0) == 0.25
    assert evaluate_setting(True, "x", 0.0) is True
    assert evaluate_setting([0.0, 1.0], "model.layers.1.x", 0.5) == 0.5


def test_filter_rules_first_match_wins_by_substring():
    rules = [
        {"filter": "self_attn", "value": 0.1},
        {"filter": "attn", "value": 0.2},  # would also match, but comes second
        {"filter": "Mlp", "value": 0.3},  # case-sensitive: never matches "mlp"
        {"value": NINE},  # bare value: catch-all, itself a gradient
    ]
    assert evaluate_setting(rules, "model.layers.0.self_attn.q_proj.weight", 0.0) == 0.1
    assert evaluate_setting(rules, "model.layers.1.mlp.up_proj.weight", 1.0) == 1.0
    assert evaluate_setting(rules, "model.layers.1.mlp.up_proj.weight", 0.5) == 0.5
    assert evaluate_setting(rules, "model.norm.weight", 0.0) == 0.0


def test_filter_star_and_no_match():
    assert evaluate_setting([{"filter": "*", "value": 0.7}], "lm_head.weight", 0.0) == 0.7
    assert evaluate_setting([{"filter": "mlp", "value": 0.7}], "lm_head.weight", 0.0) is None


def test_model_setting_wins_then_global_then_default():
    ties = METHODS["ties"]
    models = [
        ("models[0].parameters", None),
        ("models[1].parameters", {"weight": 0.3}),
        ("models[2].parameters", {}),
    ]
    p, problems = resolve_tensor(ties, {"weight": 0.9}, models, 0, "model.layers.0.mlp.up_proj.weight", 0.0)
    assert problems == []
    assert p.model_params[0] == {}  # the base takes no per-model parameters
    assert p.model_params[1] == {"weight": 0.3, "density": 1.0}
    assert p.model_params[2] == {"weight": 0.9, "density": 1.0}
    assert p.params == {
        "normalize": True,
        "rescale": False,
        "lambda": 1.0,
        "int8_mask": False,
        "argsort_ties": False,
    }


def test_filter_that_misses_falls_through_and_is_reported():
    slerp_m = METHODS["slerp"]
    models = [("models[0].parameters", None), ("models[1].parameters", None)]
    rules = {"t": [{"filter": "mlp", "value": 0.5}]}
    p, problems = resolve_tensor(slerp_m, rules, models, 0, "model.layers.0.mlp.up_proj.weight", 0.0)
    assert p.params["t"] == 0.5 and problems == []
    _, problems = resolve_tensor(slerp_m, rules, models, 0, "model.norm.weight", 0.0)
    assert problems == [("parameters.t", "slerp needs 't'; set it under the top-level 'parameters'")]


# ---- slerp / linear ----------------------------------------------------------------------------------------


def _ref_slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Independent float64 reference of Shoemake's formula with mergekit's conventions."""
    a64, b64 = a.double(), b.double()
    cos = float((a64 * b64).sum() / (a64.norm() * b64.norm()))
    if abs(cos) > 0.9995:
        return (1 - t) * a64 + t * b64
    om = math.acos(cos)
    return math.sin((1 - t) * om) / math.sin(om) * a64 + math.sin(t * om) / math.sin(om) * b64


def test_slerp_matches_reference():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 30, generator=g), torch.randn(40, 30, generator=g) * 3
    for t in (0.0, 0.25, 0.5, 0.9, 1.0):
        torch.testing.assert_close(slerp(t, a, b).double(), _ref_slerp(t, a, b), atol=1e-5, rtol=1e-5)


def test_slerp_nearly_parallel_is_lerp():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(100, generator=g)
    b = 2 * a + 1e-4 * torch.randn(100, generator=g)
    assert torch.equal(slerp(0.3, a, b), a * 0.7 + b * 0.3)


def test_slerp_zero_tensor_gives_no_nan():
    out = slerp(0.5, torch.zeros(8), torch.ones(8))
    assert torch.isfinite(out).all()


def test_linear_weighted_mean():
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(5, 7, generator=g) for _ in range(3)]
    w = [0.2, 0.5, 1.3]
    want = (0.2 * xs[0].double() + 0.5 * xs[1].double() + 1.3 * xs[2].double()) / 2.0
    torch.testing.assert_close(linear(xs, w).double(), want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(linear(xs, w, normalize=False).double(), want * 2.0, atol=1e-6, rtol=1e-6)


# ---- task vectors / ties ---------------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.1, 0.5, 0.8])
def test_keep_top_magnitude_matches_full_sort(density):
    g = torch.Generator().manual_seed(3)
    delta = torch.randn(30, 20, generator=g)
    k = int(density * delta.numel())
    order = torch.argsort(delta.abs().flatten(), descending=True)
    want = torch.zeros(delta.numel())
    want[order[:k]] = delta.flatten()[order[:k]]
    got = keep_top_magnitude(delta, density)
    assert torch.equal(got, want.view_as(delta))
    assert int((got != 0).sum()) == k


def test_keep_top_magnitude_extremes():
    delta = torch.randn(10)
    assert torch.equal(keep_top_magnitude(delta, 1.0), delta)
    # k = max(1, int(0.5)): a positive density keeps at least the largest entry, as mergekit does
    top = delta.abs().argmax()
    want = torch.zeros(10)
    want[top] = delta[top]
    assert torch.equal(keep_top_magnitude(delta, 0.05), want)
    assert torch.equal(keep_top_magnitude(delta, 0.0), torch.zeros(10))


def test_task_vector_merge_without_consensus_is_task_arithmetic():
    g = torch.Generator().manual_seed(4)
    base, a, b = (torch.randn(6, 4, generator=g) for _ in range(3))
    settings = TaskVectorSettings(sparsify="none", sign_consensus=False)
    got = task_vector_merge(base, [a, b], [0.5, 0.25], [1.0, 1.0], settings, normalize=False)
    torch.testing.assert_close(got, base + 0.5 * (a - base) + 0.25 * (b - base))


# ---- arcee fusion ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 1001])
def test_exact_quantile_equals_torch_quantile(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    for q in (0.25, 0.5, 0.75, 0.1):
        torch.testing.assert_close(exact_quantile(x, q), torch.quantile(x, q))


def _ref_fusion(
    theta_l: torch.Tensor, theta_r: torch.Tensor, lam: float, magnitude: bool = False
) -> torch.Tensor:
    p = torch.softmax(theta_l.flatten(), 0) + 1e-8
    q = torch.softmax(theta_r.flatten(), 0) + 1e-8
    kl = (p * (p / q).log()).sum()
    s = kl * ((theta_l - theta_r).abs() if magnitude else (theta_l - theta_r))
    thr = torch.quantile(s.flatten(), 0.5) + lam * (
        torch.quantile(s.flatten(), 0.75) - torch.quantile(s.flatten(), 0.25)
    )
    return torch.where(s > thr, theta_r, theta_l)


def test_arcee_fusion_matches_reference_and_lambda_controls_fraction():
    g = torch.Generator().manual_seed(5)
    theta_l = torch.randn(64, 48, generator=g)
    theta_r = theta_l + 0.1 * torch.randn(64, 48, generator=g)
    fractions = []
    for lam in (0.0, 0.5, 1.5):
        got = arcee_fusion(theta_l, theta_r, lam)
        torch.testing.assert_close(got, _ref_fusion(theta_l, theta_r, lam))
        taken = got != theta_l
        assert torch.equal(got[taken], theta_r[taken])  # each coordinate is one side or the other
        fractions.append(taken.float().mean().item())
    assert fractions[0] == pytest.approx(0.5, abs=0.01)  # lambda = 0: above the median
    assert fractions[0] > fractions[1] > fractions[2] > 0
    assert torch.equal(arcee_fusion(theta_l, theta_r), arcee_fusion(theta_l, theta_r))


def test_arcee_fusion_magnitude_takes_moves_in_both_directions():
    g = torch.Generator().manual_seed(6)
    theta_l = torch.randn(64, 48, generator=g)
    theta_r = theta_l + 0.1 * torch.randn(64, 48, generator=g)
    signed = arcee_fusion(theta_l, theta_r, 1.0)
    both = arcee_fusion(theta_l, theta_r, 1.0, magnitude=True)
    torch.testing.assert_close(both, _ref_fusion(theta_l, theta_r, 1.0, magnitude=True))
    up = lambda m: ((m != theta_l) & (theta_r > theta_l)).sum().item()  # noqa: E731
    down = lambda m: ((m != theta_l) & (theta_r < theta_l)).sum().item()  # noqa: E731
    assert up(signed) == 0 and down(signed) > 0  # eq. (3) as printed: only downward moves are taken
    assert up(both) > 0 and down(both) > 0


def test_arcee_fusion_identical_inputs_keep_left():
    x = torch.randn(10, 10)
    assert torch.equal(arcee_fusion(x, x.clone()), x)
