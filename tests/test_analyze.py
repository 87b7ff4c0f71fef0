"""Task-vector analysis against hand-made deltas: cosines, TIES sign conflicts, top-share, per-layer pooling."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from branchmerge.cli.main import app
from branchmerge.errors import BranchmergeError
from branchmerge.merge.analyze import analyze_task_vectors, tensor_kind

Q0 = "model.layers.0.self_attn.q_proj.weight"  # 64 x 64
K0 = "model.layers.0.self_attn.k_proj.weight"  # 32 x 64
N0 = "model.layers.0.input_layernorm.weight"  # 64
NAN = pytest.approx(math.nan, nan_ok=True)


@pytest.fixture(scope="module")
def base(make_checkpoint) -> Path:
    return make_checkpoint(seed=11)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _expert(base: Path, out: Path, deltas: dict[str, torch.Tensor]) -> Path:
    """A copy of `base` with theta = theta_base + delta for the named tensors."""
    weights = _weights(base)
    for name, delta in deltas.items():
        weights[name] = weights[name] + delta
    out.mkdir()
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(base / "config.json", out / "config.json")
    return out


def _one_hot(shape: tuple[int, ...], values: dict[tuple[int, ...], float]) -> torch.Tensor:
    t = torch.zeros(shape)
    for index, v in values.items():
        t[index] = v
    return t


def _deltas(base: Path, expert: Path) -> dict[str, torch.Tensor]:
    b = _weights(base)
    return {n: (t.double() - b[n].double()).flatten() for n, t in _weights(expert).items()}


def test_orthogonal_deltas_have_cosine_zero_and_half_their_overlap_in_conflict(base, tmp_path):
    # delta_a = (1, 1), delta_b = (1, -1) on two coordinates: <a, b> = 0; both nonzero on both, signs differ on one.
    a = _expert(base, tmp_path / "a", {Q0: _one_hot((64, 64), {(0, 0): 1.0, (0, 1): 1.0})})
    b = _expert(base, tmp_path / "b", {Q0: _one_hot((64, 64), {(0, 0): 1.0, (0, 1): -1.0})})
    r = analyze_task_vectors(base, [a, b], density=1.0, show_progress=False)
    q = next(row for row in r.tensors if row.name == Q0)
    assert (q.layer, q.kind, q.shape) == (0, "q_proj", (64, 64))
    assert q.sums.cosine(0, 1) == pytest.approx(0.0, abs=1e-6)
    assert q.sums.norm(0) == pytest.approx(math.sqrt(2), rel=1e-6)
    base_norm = _weights(base)[Q0].double().norm().item()
    assert q.sums.rel_norm(1) == pytest.approx(math.sqrt(2) / base_norm, rel=1e-6)
    assert (q.sums.overlap, q.sums.conflict, q.sums.sign_conflict()) == (2, 1, 0.5)
    # Only Q0 moved: the layer and the model pool to the same numbers; layer 1 did not move at all.
    assert r.total.cosine(0, 1) == pytest.approx(0.0, abs=1e-6)
    assert r.layers[0].sign_conflict() == 0.5
    assert r.layers[1].cosine(0, 1) == NAN and r.layers[1].norm(0) == 0.0
    assert r.total.numel == sum(t.numel() for t in _weights(base).values())


def test_identical_and_opposite_deltas(base, tmp_path):
    torch.manual_seed(0)
    d = {n: 0.01 * torch.randn_like(t) for n, t in _weights(base).items()}
    a = _expert(base, tmp_path / "a", d)
    same = _expert(base, tmp_path / "same", d)
    opposite = _expert(base, tmp_path / "opposite", {n: -t for n, t in d.items()})
    r = analyze_task_vectors(base, [a, same, opposite], density=1.0, show_progress=False)
    nonzero = sum(int((t != 0).sum()) for t in _deltas(base, a).values())
    for s in [*(row.sums for row in r.tensors), *r.layers.values(), r.total]:
        assert s.cosine(0, 1) == pytest.approx(1.0, abs=1e-6)
        assert s.cosine(0, 2) == pytest.approx(-1.0, abs=1e-6)
        assert s.mean_cosine() == pytest.approx((1 - 1 - 1) / 3, abs=1e-6)
    # every moved coordinate has two + and one -: all overlap, all conflict
    assert r.total.overlap == r.total.conflict == nonzero > 0.99 * r.total.numel
    two = analyze_task_vectors(base, [a, same], density=1.0, show_progress=False)
    assert (two.total.overlap, two.total.conflict, two.total.sign_conflict()) == (nonzero, 0, 0.0)


def test_layer_numbers_pool_sums_not_per_tensor_ratios(base, tmp_path):
    # Q0: both +1 everywhere (cos 1); K0: +0.5 against -0.5 (cos -1). The mean of the two cosines is 0, but the
    # layer's cosine is that of the concatenated deltas: (4096 - 2048 * 0.25) / (4096 + 2048 * 0.25) = 7/9.
    ones_q, ones_k = torch.ones(64, 64), torch.ones(32, 64)
    a = _expert(base, tmp_path / "a", {Q0: ones_q, K0: 0.5 * ones_k})
    b = _expert(base, tmp_path / "b", {Q0: ones_q, K0: -0.5 * ones_k})
    r = analyze_task_vectors(base, [a, b], density=1.0, show_progress=False)
    assert r.layers[0].cosine(0, 1) == pytest.approx(7 / 9, rel=1e-6)
    assert r.total.cosine(0, 1) == pytest.approx(7 / 9, rel=1e-6)
    assert r.cells()[(0, "k_proj")].cosine(0, 1) == pytest.approx(-1.0, rel=1e-6)
    assert (r.layers[0].overlap, r.layers[0].conflict) == (4096 + 2048, 2048)
    assert r.layers[0].sign_conflict() == pytest.approx(1 / 3)
    layer0_base_sq = sum(
        t.double().square().sum().item() for n, t in _weights(base).items() if ".layers.0." in n
    )
    assert r.layers[0].rel_norm(0) == pytest.approx(
        math.sqrt(4096 + 512) / math.sqrt(layer0_base_sq), rel=1e-6
    )

    # Random, correlated deltas: every layer's cosine is the cosine of its tensors' concatenated deltas.
    torch.manual_seed(1)
    da = {n: 0.01 * torch.randn_like(t) for n, t in _weights(base).items()}
    db = {n: 0.5 * t + 0.01 * torch.randn_like(t) for n, t in da.items()}
    c = _expert(base, tmp_path / "c", da)
    e = _expert(base, tmp_path / "e", db)
    r = analyze_task_vectors(base, [c, e], show_progress=False)
    dc, de = _deltas(base, c), _deltas(base, e)
    for layer, s in r.layers.items():
        names = [n for n in dc if f".layers.{layer}." in n]
        x, y = torch.cat([dc[n] for n in names]), torch.cat([de[n] for n in names])
        assert s.cosine(0, 1) == pytest.approx((x @ y / (x.norm() * y.norm())).item(), rel=1e-6)
    x, y = torch.cat(list(dc.values())), torch.cat(list(de.values()))
    assert r.total.cosine(0, 1) == pytest.approx((x @ y / (x.norm() * y.norm())).item(), rel=1e-6)
    assert r.total.cosine(0, 1) == pytest.approx(0.5 / math.sqrt(1.25), abs=0.02)  # and it is what we built


def test_density_trims_before_counting_sign_conflicts(base, tmp_path):
    # a: +2 on [0, 32), -1 on [32, 64);  b: -2 on [0, 16), +2 on [16, 32), +1 on [32, 64).
    a = torch.cat([torch.full((32,), 2.0), torch.full((32,), -1.0)])
    b = torch.cat([torch.full((16,), -2.0), torch.full((16,), 2.0), torch.full((32,), 1.0)])
    ea, eb = _expert(base, tmp_path / "a", {N0: a}), _expert(base, tmp_path / "b", {N0: b})
    full = analyze_task_vectors(base, [ea, eb], density=1.0, show_progress=False)
    assert (full.total.overlap, full.total.conflict) == (64, 16 + 32)
    assert full.total.sign_conflict() == 0.75
    # density 0.5 keeps int(0.5 * 64) = 32 entries of each: [0, 32) for both, where [0, 16) disagree
    trimmed = analyze_task_vectors(base, [ea, eb], density=0.5, show_progress=False)
    assert (trimmed.total.overlap, trimmed.total.conflict, trimmed.total.sign_conflict()) == (32, 16, 0.5)


def test_top_share_and_its_pooling_with_one_expert(base, tmp_path):
    # N0: |delta| = 8 on 4 coordinates, 0.5 on the other 60 -> mass 62; top 4 (= 0.0625 * 64) hold 32.
    # Q0: |delta| = 1 everywhere -> top 256 (= 0.0625 * 4096) of 4096 hold 256.
    n0 = torch.cat([torch.full((4,), 8.0), torch.full((60,), -0.5)])
    expert = _expert(base, tmp_path / "a", {N0: n0, Q0: torch.ones(64, 64)})
    r = analyze_task_vectors(base, [expert], tmp_path / "out", top_fraction=0.0625, show_progress=False)
    by_name = {row.name: row.sums for row in r.tensors}
    assert by_name[N0].top_share(0) == pytest.approx(32 / 62, rel=1e-6)
    assert by_name[Q0].top_share(0) == pytest.approx(256 / 4096, rel=1e-5)
    assert r.layers[0].top_share(0) == pytest.approx((32 + 256) / (62 + 4096), rel=1e-5)
    assert r.layers[1].top_share(0) == NAN  # nothing moved there
    small = analyze_task_vectors(base, [expert], top_fraction=0.01, show_progress=False)
    assert {row.name: row.sums for row in small.tensors}[N0].top_share(0) == pytest.approx(8 / 62, rel=1e-6)
    # one expert: no pairs, so no cosine and no sign conflict; the heatmap shows the relative norm only
    assert r.total.overlap == 0 and r.total.sign_conflict() == NAN and r.total.mean_cosine() == NAN
    assert [p.name for p in r.files] == ["analysis.csv", "summary.md", "heatmap.png"]
    rows = {row["name"]: row for row in csv.DictReader((tmp_path / "out" / "analysis.csv").open())}
    assert float(rows[N0]["top_share[a]"]) == pytest.approx(32 / 62, rel=1e-6)
    assert not any(k.startswith("cos[") for k in rows[N0])


def test_tensor_kinds():
    assert tensor_kind("model.layers.3.mlp.down_proj.weight") == "down_proj"
    assert tensor_kind("model.layers.3.self_attn.q_proj.bias") == "q_proj.bias"
    assert tensor_kind("lm_head.weight") == "lm_head"
    assert tensor_kind("model.norm.weight") == "norm"


def test_bad_inputs_are_reported_before_any_weight_is_read(base, make_checkpoint, tmp_path):
    wide = make_checkpoint(seed=11, intermediate_size=96)
    with pytest.raises(BranchmergeError) as e:
        analyze_task_vectors(base, [wide], tmp_path / "out", show_progress=False)
    first = str(e.value).splitlines()[0]
    assert "'model.layers.0.mlp.down_proj.weight' has shape [64, 96]" in first
    assert str(base) in first and str(wide) in first
    assert not (tmp_path / "out").exists()

    with pytest.raises(BranchmergeError) as e:
        analyze_task_vectors(base, [tmp_path / "nope", base], top_fraction=0, show_progress=False)
    assert str(e.value).splitlines() == [
        "top_fraction: must be in (0, 1]; got 0",
    ]
    with pytest.raises(BranchmergeError) as e:
        analyze_task_vectors(base, [tmp_path / "nope", base], show_progress=False)
    assert str(e.value).splitlines() == [
        f"experts[0]: {tmp_path / 'nope'}: model folder not found",
        f"experts[1]: {base} is the base folder itself; its task vector would be zero",
    ]


def test_cli_writes_table_summary_and_heatmap(base, tmp_path):
    a = _expert(base, tmp_path / "a", {Q0: torch.ones(64, 64), K0: 0.5 * torch.ones(32, 64)})
    b = _expert(base, tmp_path / "b", {Q0: torch.ones(64, 64), K0: -0.5 * torch.ones(32, 64)})
    out = tmp_path / "report"
    args = ["analyze", "--base", str(base), str(a), str(b), "--out", str(out), "--density", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "0.7778" in result.output  # layer 0's cosine, 7/9 (see the pooling test)
    rows = {row["name"]: row for row in csv.DictReader((out / "analysis.csv").open())}
    assert float(rows[K0]["cos[a|b]"]) == pytest.approx(-1.0, rel=1e-6)
    assert float(rows[Q0]["cos[a|b]"]) == pytest.approx(1.0, rel=1e-6)
    assert (rows[K0]["layer"], rows[K0]["kind"], rows["model.norm.weight"]["layer"]) == ("0", "k_proj", "")
    summary = (out / "summary.md").read_text()
    layer0 = next(line for line in summary.splitlines() if line.startswith("| 0 |"))
    assert "0.7778" in layer0 and "0.3333" in layer0  # cosine 7/9, sign conflict 1/3
    png = (out / "heatmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 3 * height > 0  # three panels side by side, two layers tall


def test_cli_missing_folder_is_one_line_and_exit_2(base, tmp_path):
    help_ = CliRunner().invoke(app, ["analyze", "--help"])
    assert help_.exit_code == 0 and "Example: branchmerge analyze --base" in help_.output
    result = CliRunner().invoke(app, ["analyze", "--base", str(base), str(tmp_path / "nope")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"error: experts[0]: {tmp_path / 'nope'}: model folder not found"
    ]
