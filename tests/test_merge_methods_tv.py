"""Task-vector methods (task arithmetic, TIES, DARE), Model Stock and mergekit's Arcee Fusion, each checked
against an independent reference written from the paper's equation (loops and sorts, not the library code)."""

from __future__ import annotations

import itertools

import pytest
import torch

from branchmerge.merge.methods import METHODS, TensorParams
from branchmerge.merge.methods.arcee_fusion_mergekit import arcee_fusion_mergekit
from branchmerge.merge.methods.model_stock import model_stock
from branchmerge.merge.methods.task_vector import drop_random, keep_top_magnitude, rescale_l1


def _params(method: str, n_models: int, weights, densities=None, **glob) -> TensorParams:
    spec = METHODS[method]
    params = {k: s.default for k, s in spec.params.items()} | glob
    models = [{}] + [
        {"weight": w, "density": d} for w, d in zip(weights, densities or [1.0] * len(weights), strict=True)
    ]
    assert len(models) == n_models
    return TensorParams(
        base=0, params=params, model_params=models, tensor="model.layers.0.mlp.up_proj.weight"
    )


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_task_arithmetic_is_base_plus_lambda_weighted_sum():
    base, a, b = _rand(8, 5, seed=1), _rand(8, 5, seed=2), _rand(8, 5, seed=3)
    p = _params("task_arithmetic", 3, [0.7, -0.2], **{"lambda": 0.5})
    got = METHODS["task_arithmetic"].apply([base, a, b], p)
    want = base.double() + 0.5 * (0.7 * (a.double() - base) + -0.2 * (b.double() - base))
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)
    normalized = METHODS["task_arithmetic"].apply(
        [base, a, b], _params("task_arithmetic", 3, [2, 2], normalize=True)
    )
    torch.testing.assert_close(normalized, base + ((a - base) + (b - base)) / 2, atol=1e-6, rtol=0)


def _ref_ties(base, thetas, weights, densities, normalize=True):
    """TIES Algorithm 1 element by element with Python numbers (k-th largest by a full sort of |delta|)."""
    n = base.numel()
    deltas = []
    for theta, w, d in zip(thetas, weights, densities, strict=True):
        delta = (theta - base).flatten().tolist()
        k = max(1, int(d * n)) if d < 1 else n
        order = sorted(range(n), key=lambda i, delta=delta: (-abs(delta[i]), i))  # ties: lower index first
        keep = set(order[:k])
        deltas.append([w * delta[i] if i in keep else 0.0 for i in range(n)])
    out = []
    for i in range(n):
        total = sum(dl[i] for dl in deltas)
        gamma = 1.0 if total >= 0 else -1.0
        agree = [
            (dl[i], w)
            for dl, w in zip(deltas, weights, strict=True)
            if dl[i] != 0 and (dl[i] > 0) == (gamma > 0)
        ]
        merged = sum(v for v, _ in agree)
        divisor = sum(w for _, w in agree) or 1.0
        out.append(base.flatten()[i].item() + (merged / divisor if normalize else merged))
    return torch.tensor(out).view_as(base)


@pytest.mark.parametrize("densities", [[1.0, 1.0], [0.5, 0.3], [0.01, 0.9]])
def test_ties_matches_algorithm_1(densities):
    base, a, b = _rand(9, 7, seed=4), _rand(9, 7, seed=5), _rand(9, 7, seed=6)
    p = _params("ties", 3, [1.0, 0.6], densities)
    got = METHODS["ties"].apply([base, a, b], p)
    torch.testing.assert_close(got, _ref_ties(base, [a, b], [1.0, 0.6], densities), atol=1e-5, rtol=0)


def test_trim_ties_at_the_boundary_keep_lower_indices_or_argsort_order():
    delta = torch.tensor([1.0, -3.0, 2.0, -2.0, 2.0, 0.5, 2.0, -1.0])  # |2| appears 4 times around k = 3
    got = keep_top_magnitude(delta, 3 / 8)
    assert got.tolist() == [0.0, -3.0, 2.0, -2.0, 0.0, 0.0, 0.0, 0.0]
    want = torch.zeros(8)
    top = torch.argsort(delta.abs(), descending=True)[:3]
    want[top] = delta[top]
    assert torch.equal(keep_top_magnitude(delta, 3 / 8, argsort_ties=True), want)
    assert int((keep_top_magnitude(delta, 3 / 8, argsort_ties=True) != 0).sum()) == 3


def test_dare_mask_is_seeded_per_tensor_and_keeps_about_density():
    delta = _rand(200, 100, seed=7)
    a = drop_random(delta, 0.3, seed=11)
    assert torch.equal(a, drop_random(delta, 0.3, seed=11))
    assert not torch.equal(a, drop_random(delta, 0.3, seed=12))
    kept = float((a != 0).float().mean())
    assert abs(kept - 0.3) < 0.01  # 20k Bernoulli(0.3) draws: sd 0.003
    assert torch.equal(a[a != 0], delta[a != 0])


def test_rescale_matches_l1_norm():
    delta = _rand(50, seed=8)
    kept = drop_random(delta, 0.5, seed=1)
    scaled = rescale_l1(delta, kept)
    assert float(scaled.abs().sum()) == pytest.approx(float(delta.abs().sum()), rel=1e-6)
    assert torch.equal(rescale_l1(delta, torch.zeros(50)), torch.zeros(50))  # nothing kept: left as is


def test_dare_linear_equals_reference_with_the_same_masks():
    base, a, b = _rand(30, 20, seed=9), _rand(30, 20, seed=10), _rand(30, 20, seed=11)
    p = _params("dare_linear", 3, [0.5, 0.5], [0.4, 0.6], seed=3)
    got = METHODS["dare_linear"].apply([base, a, b], p)
    again = METHODS["dare_linear"].apply([base, a, b], p)
    assert torch.equal(got, again)
    # Recover each mask from the method's own seeding rule by dropping on a delta of ones.
    from branchmerge.merge.methods.task_vector import _seed

    want = base.clone()
    for i, (theta, d) in enumerate(((a, 0.4), (b, 0.6)), start=1):
        mask = drop_random(torch.ones(30, 20), d, _seed(3, p.tensor, i)) != 0
        delta = theta - base
        kept = delta * mask
        want += 0.5 * kept * (delta.abs().sum() / kept.abs().sum())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    other_tensor = TensorParams(
        base=0, params=p.params, model_params=p.model_params, tensor="model.norm.weight"
    )
    assert not torch.equal(METHODS["dare_linear"].apply([base, a, b], other_tensor), got)


def test_dare_ties_at_density_one_is_ties():
    base, a, b = _rand(6, 6, seed=12), _rand(6, 6, seed=13), _rand(6, 6, seed=14)
    dare = METHODS["dare_ties"].apply([base, a, b], _params("dare_ties", 3, [1, 1], normalize=True))
    ties = METHODS["ties"].apply([base, a, b], _params("ties", 3, [1, 1]))
    assert torch.equal(dare, ties)


def _ref_model_stock(w0, ws):
    n = len(ws)
    offsets = [(w - w0).flatten().double() for w in ws]
    cos = [float(x @ y / (x.norm() * y.norm())) for x, y in itertools.combinations(offsets, 2)]
    c = sum(cos) / len(cos)
    t = n * c / (1 + (n - 1) * c)
    return t * (sum(w.double() for w in ws) / n) + (1 - t) * w0.double()


def test_model_stock_matches_equations_5_and_6():
    w0 = _rand(12, 8, seed=15)
    ws = [w0 + 0.1 * _rand(12, 8, seed=s) + 0.05 for s in (16, 17, 18)]  # shared drift: cos ~ 0.2
    got = model_stock(w0, ws)
    torch.testing.assert_close(got.double(), _ref_model_stock(w0, ws), atol=1e-5, rtol=0)
    rows = model_stock(w0, ws, filter_wise=True)
    for r in range(12):
        want = _ref_model_stock(w0[r], [w[r] for w in ws])
        torch.testing.assert_close(rows[r].double(), want, atol=1e-5, rtol=0)


def test_model_stock_identical_models_give_that_model_and_opposite_ones_keep_base():
    w0, w1 = _rand(5, 5, seed=19), _rand(5, 5, seed=20)
    torch.testing.assert_close(model_stock(w0, [w1, w1.clone()]), w1)  # cos = 1: t = 1
    opposite = [w0 + (w1 - w0), w0 - (w1 - w0)]  # cos = -1, 1 + (N-1) cos = 0: the base is kept
    torch.testing.assert_close(model_stock(w0, opposite), w0)


def test_arcee_fusion_mergekit_matches_its_formula():
    theta_l = _rand(40, 30, seed=21)
    theta_r = theta_l + 0.2 * _rand(40, 30, seed=22)
    p = torch.softmax(theta_r.double(), -1) + 1e-8
    q = torch.softmax(theta_l.double(), -1) + 1e-8
    kl = (p * (p / q).log()).sum(-1, keepdim=True)
    s = ((theta_r - theta_l).abs().double() * kl).flatten()
    srt = s.sort().values
    n = s.numel()
    q1, med, q3 = (srt[int(a * (n - 1))] for a in (0.25, 0.5, 0.75))
    mask = (s >= med + 1.5 * (q3 - q1)).view_as(theta_l)
    want = torch.where(mask, theta_r, theta_l)
    got = arcee_fusion_mergekit(theta_l, theta_r)
    assert (got != want).sum() <= 2  # fp32 vs fp64 importance may flip a coordinate sitting on the fence
    assert 0.02 < float(mask.float().mean()) < 0.2
