"""The merge engine end to end on tiny random Qwen3 checkpoints, against hand-written references."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from branchmerge.errors import BranchmergeError
from branchmerge.merge import METHODS, MergeConfig, load_merge_config, run_merge

NINE = [0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1]


@pytest.fixture(scope="module")
def pair(make_checkpoint) -> tuple[Path, Path]:
    """Two tied 2-layer checkpoints with different random weights."""
    return make_checkpoint(seed=1), make_checkpoint(seed=2)


@pytest.fixture(scope="module")
def third(make_checkpoint) -> Path:
    return make_checkpoint(seed=3)


@pytest.fixture(scope="module")
def untied3(make_checkpoint) -> tuple[Path, Path]:
    """Two untied 3-layer checkpoints (so lm_head.weight exists and the middle layer sits at tau = 0.5)."""
    return (
        make_checkpoint(seed=4, tie_word_embeddings=False, num_layers=3),
        make_checkpoint(seed=5, tie_word_embeddings=False, num_layers=3),
    )


def sd(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def merge(tmp_path: Path, config: dict, name: str = "out", **kw) -> dict[str, torch.Tensor]:
    run_merge(config, tmp_path / name, show_progress=False, **kw)
    return sd(tmp_path / name)


def ref_slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a64, b64 = a.double(), b.double()
    cos = float((a64 * b64).sum() / (a64.norm() * b64.norm()))
    if abs(cos) > 0.9995:
        return ((1 - t) * a64 + t * b64).float()
    om = math.acos(cos)
    return (math.sin((1 - t) * om) / math.sin(om) * a64 + math.sin(t * om) / math.sin(om) * b64).float()


def slerp_cfg(base: Path, other: Path, t: object) -> dict:
    return {
        "merge_method": "slerp",
        "base_model": str(base),
        "models": [{"model": str(other)}],
        "parameters": {"t": t},
    }


# ---- slerp -------------------------------------------------------------------------------------------------


def test_slerp_end_points_are_bit_exact(tmp_path, pair):
    a, b = pair
    for t, want in ((0, sd(a)), (1, sd(b))):
        got = merge(tmp_path, slerp_cfg(a, b, t), name=f"t{t}")
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)


def test_slerp_half_matches_reference(tmp_path, pair):
    a, b = pair
    sa, sb = sd(a), sd(b)
    got = merge(tmp_path, slerp_cfg(a, b, 0.5))
    for k in sa:
        torch.testing.assert_close(got[k], ref_slerp(0.5, sa[k], sb[k]), atol=1e-6, rtol=1e-5)
    # Qwen3 norm weights start at 1 in both models: parallel, so the lerp fallback, exactly 1.
    assert torch.equal(got["model.norm.weight"], torch.ones(64))


def test_slerp_design_recipe_pins_embeddings_and_follows_gradient(tmp_path, untied3):
    """DESIGN.md method 1: t = 1 for embed_tokens and lm_head, the 9-point gradient elsewhere."""
    a, b = untied3
    t = [{"filter": "embed_tokens", "value": 1}, {"filter": "lm_head", "value": 1}, {"value": NINE}]
    result = run_merge(slerp_cfg(a, b, t), tmp_path / "out", show_progress=False)
    got, sa, sb = sd(tmp_path / "out"), sd(a), sd(b)
    for k in sa:
        if "embed_tokens" in k or k == "lm_head.weight" or ".layers.2." in k:
            assert torch.equal(got[k], sb[k]), k  # t = 1
        elif ".layers.0." in k or k == "model.norm.weight":
            assert torch.equal(got[k], sa[k]), k  # t = 0 (norm sits outside the layers: tau = 0)
        else:
            assert ".layers.1." in k  # tau = 0.5 -> s = 4 -> t = 0.5
            torch.testing.assert_close(got[k], ref_slerp(0.5, sa[k], sb[k]), atol=1e-6, rtol=1e-5)
    n_middle = sum(".layers.1." in k for k in sa)
    assert result.n_copied == len(sa) - n_middle


# ---- linear / ties / arcee fusion ----------------------------------------------------------------------------


def test_linear_weighted_mean(tmp_path, pair, third):
    cfg = {
        "merge_method": "linear",
        "models": [
            {"model": str(pair[0]), "parameters": {"weight": 1.0}},
            {"model": str(pair[1]), "parameters": {"weight": 2.0}},
            {"model": str(third), "parameters": {"weight": 0.5}},
        ],
    }
    got = merge(tmp_path, cfg)
    s = [sd(p) for p in (*pair, third)]
    for k in s[0]:
        want = (1.0 * s[0][k].double() + 2.0 * s[1][k].double() + 0.5 * s[2][k].double()) / 3.5
        torch.testing.assert_close(got[k].double(), want, atol=1e-6, rtol=1e-6)


def test_linear_weight_gradient_puts_non_layer_tensors_at_tau_zero(tmp_path, untied3):
    a, b = untied3
    cfg = {
        "merge_method": "linear",
        "parameters": {"weight": 1.0},  # global default for every model
        "models": [{"model": str(a)}, {"model": str(b), "parameters": {"weight": [0, 1]}}],
    }
    got, sa, sb = merge(tmp_path, cfg), sd(a), sd(b)
    for k in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.mlp.up_proj.weight"):
        assert torch.equal(got[k], sa[k]), k  # weight of b is 0 at tau = 0: a copied as is
    k = "model.layers.1.mlp.up_proj.weight"  # tau = .5: weights 1 and .5
    torch.testing.assert_close(got[k], (sa[k] + 0.5 * sb[k]) / 1.5)
    k = "model.layers.2.mlp.up_proj.weight"  # tau = 1: plain mean
    torch.testing.assert_close(got[k], (sa[k] + sb[k]) / 2)


def test_ties_one_model_density_one_is_task_arithmetic(tmp_path, pair):
    base, m = pair
    cfg = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [{"model": str(m), "parameters": {"weight": 0.7, "density": 1.0}}],
        "parameters": {"normalize": False},
    }
    got, sb, sm = merge(tmp_path, cfg), sd(base), sd(m)
    for k in sb:
        torch.testing.assert_close(got[k], sb[k] + 0.7 * (sm[k] - sb[k]), atol=1e-6, rtol=1e-6)


def ref_ties(
    base: torch.Tensor, others: list[torch.Tensor], w: list[float], dens: list[float]
) -> torch.Tensor:
    """Yadav et al. Algorithm 1 with mergekit's weighting, written with a full argsort, in float64."""
    kept = []
    for theta, wt, d in zip(others, w, dens, strict=True):
        delta = (theta.double() - base.double()).flatten()
        k = int(d * delta.numel())
        top = torch.argsort(delta.abs(), descending=True)[:k]
        trimmed = torch.zeros_like(delta)
        trimmed[top] = delta[top]
        kept.append(wt * trimmed)
    stacked = torch.stack(kept)
    elected = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = torch.sign(stacked) == elected
    divisor = (torch.tensor(w, dtype=torch.float64)[:, None] * agree).sum(0)
    divisor[divisor == 0] = 1
    return (base.double().flatten() + (stacked * agree).sum(0) / divisor).view_as(base)


def test_ties_two_models_half_density_matches_reference(tmp_path, pair, third):
    base, m1, m2 = third, *pair
    cfg = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [
            {"model": str(base)},  # listing the base is allowed, as in mergekit
            {"model": str(m1), "parameters": {"weight": 0.6, "density": 0.5}},
            {"model": str(m2), "parameters": {"weight": 0.4, "density": 0.5}},
        ],
        "parameters": {"int8_mask": True},
    }
    got, s0, s1, s2 = merge(tmp_path, cfg), sd(base), sd(m1), sd(m2)
    for k in s0:
        want = ref_ties(s0[k], [s1[k], s2[k]], [0.6, 0.4], [0.5, 0.5])
        torch.testing.assert_close(got[k].double(), want, atol=1e-6, rtol=1e-6)


def test_arcee_fusion_matches_paper_formula_and_is_deterministic(tmp_path, pair):
    left, right = pair
    cfg = {"merge_method": "arcee_fusion", "base_model": str(left), "models": [{"model": str(right)}]}
    got, again = merge(tmp_path, cfg), merge(tmp_path, cfg, name="again")
    sl, sr = sd(left), sd(right)
    for k in sl:
        assert torch.equal(got[k], again[k])
        p = torch.softmax(sl[k].flatten(), 0) + 1e-8
        q = torch.softmax(sr[k].flatten(), 0) + 1e-8
        s = (p * torch.log(p / q)).sum() * (sl[k] - sr[k])  # S = KL * (theta_L - theta_R), DESIGN.md
        qs = torch.quantile(s.flatten(), torch.tensor([0.25, 0.5, 0.75]))
        mask = s > qs[1] + 1.5 * (qs[2] - qs[0])
        assert torch.equal(got[k], torch.where(mask, sr[k], sl[k])), k
    b1 = (tmp_path / "out" / "model.safetensors").read_bytes()
    assert b1 == (tmp_path / "again" / "model.safetensors").read_bytes()


def test_arcee_fusion_lambda_changes_selected_fraction(tmp_path, pair):
    left, right = pair
    k = "model.layers.0.mlp.down_proj.weight"
    base = {"merge_method": "arcee_fusion", "base_model": str(left), "models": [{"model": str(right)}]}
    fractions = []
    for lam in (0.0, 1.5):
        got = merge(tmp_path, {**base, "parameters": {"lambda": lam}}, name=f"l{lam}")
        fractions.append((got[k] != sd(left)[k]).float().mean().item())
    assert fractions[0] == pytest.approx(0.5, abs=0.01)
    assert 0 < fractions[1] < 0.2


# ---- the output folder -----------------------------------------------------------------------------------------


def test_output_loads_runs_and_carries_tokenizer_and_card(tmp_path, pair, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a, b = pair
    out = tmp_path / "out"
    result = run_merge(slerp_cfg(a, b, 0.3), out)  # progress bar on, as users see it
    assert (result.method, result.n_tensors, result.n_shards, result.out_dir) == ("slerp", len(sd(a)), 1, out)

    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(model.model.embed_tokens.weight.detach(), sd(out)["model.embed_tokens.weight"])
    ids = tokenizer("12+34=", return_tensors="pt").input_ids
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(logits).all()
    assert AutoTokenizer.from_pretrained(out)("12+34=").input_ids == ids[0].tolist()

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (a / name).read_bytes(), name
    card = (out / "README.md").read_text()
    for folder in pair:
        assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() in card
    assert "merge_method: slerp" in card
    written = load_merge_config(out / "merge_config.yaml")
    assert written.model_dump() == MergeConfig.model_validate(slerp_cfg(a, b, 0.3)).model_dump()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_out_dtype_bfloat16(tmp_path, pair):
    a, b = pair
    got = merge(tmp_path, {**slerp_cfg(a, b, 0.5), "out_dtype": "bfloat16"})
    want = ref_slerp(
        0.5, sd(a)["model.layers.1.mlp.up_proj.weight"], sd(b)["model.layers.1.mlp.up_proj.weight"]
    )
    assert all(t.dtype == torch.bfloat16 for t in got.values())
    assert torch.equal(got["model.layers.1.mlp.up_proj.weight"], want.to(torch.bfloat16))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"


def test_sharded_output_loads_and_reads_back_as_input(tmp_path, pair):
    from transformers import AutoModelForCausalLM

    a, b = pair
    result = run_merge(
        slerp_cfg(a, b, 0.5), tmp_path / "sharded", show_progress=False, max_shard_bytes=60_000
    )
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in (tmp_path / "sharded").glob("*.safetensors"))
    assert result.n_shards == len(files) > 1 and set(index["weight_map"].values()) == set(files)
    assert files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    _, info = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded", output_loading_info=True)
    assert not info["missing_keys"]
    again = merge(tmp_path, slerp_cfg(tmp_path / "sharded", b, 0), name="from_sharded")
    assert all(torch.equal(t, sd(tmp_path / "sharded")[k]) for k, t in again.items())


def test_tokenizer_source_folder(tmp_path, pair):
    a, b = pair
    tok = tmp_path / "tok"
    tok.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tok / name).write_bytes((b / name).read_bytes())
    (tok / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    run_merge({**slerp_cfg(a, b, 0), "tokenizer_source": str(tok)}, tmp_path / "out", show_progress=False)
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == "{{ messages[0]['content'] }}"


# ---- bad input -----------------------------------------------------------------------------------------------


def _bad_configs(a: Path, b: Path, c: Path, other_shape: Path) -> dict[str, tuple[dict, list[str]]]:
    s = {"merge_method": "slerp", "base_model": str(a), "parameters": {"t": 0.5}}
    one = [{"model": str(b)}]
    return {
        "unknown method": (
            {**s, "merge_method": "slerpp", "models": one},
            [
                "merge_method: 'slerpp' is not a merge method (known: arcee_fusion, arcee_fusion_mergekit, dare_linear, dare_ties, "
                "fisher, linear, model_stock, regmean, slerp, task_arithmetic, ties)"
            ],
        ),
        "unknown key": (
            {**s, "models": [{"model": str(b), "paramters": {}}]},
            ["models[0].paramters: unknown key"],
        ),
        "slices": ({**s, "models": one, "slices": []}, ["slices: the 'slices' form is not supported"]),
        "three models": (
            {**s, "models": [{"model": str(b)}, {"model": str(c)}]},
            ["models: slerp merges exactly 2 models, one of them the base_model; got 3"],
        ),
        "no base": ({**s, "base_model": None, "models": one}, ["base_model: slerp needs a base_model"]),
        "missing folder": (
            {**s, "models": [{"model": "/no/such/model"}]},
            ["models[0].model: /no/such/model: model folder not found"],
        ),
        "shapes": (
            {**s, "models": [{"model": str(other_shape)}]},
            ["tensor 'model.layers.0.mlp.down_proj.weight' has shape [64, 96] in", f"but [64, 128] in {a}"],
        ),
        "param of another method": (
            {**s, "models": one, "parameters": {"t": 0.5, "density": 0.5}},
            ["parameters.density: not a parameter of slerp (known: t)"],
        ),
        "global param under a model": (
            {**s, "models": [{"model": str(b), "parameters": {"t": 0.2}}]},
            ["models[0].parameters.t: 't' is a global parameter of slerp"],
        ),
        "missing t": (
            {**s, "models": one, "parameters": {}},
            [
                "parameters.t: slerp needs 't'; set it under the top-level 'parameters' (tensor 'model.embed_tokens.weight' and 23 more)"
            ],
        ),
        "bad value": ({**s, "models": one, "parameters": {"t": "half"}}, ["parameters.t: must be a number"]),
        "missing weight": (
            {
                "merge_method": "linear",
                "models": [{"model": str(a), "parameters": {"weight": 1}}, {"model": str(b)}],
            },
            ["models[1].parameters.weight: linear needs 'weight' for every model"],
        ),
        "density range": (
            {
                "merge_method": "ties",
                "base_model": str(a),
                "models": [{"model": str(b), "parameters": {"weight": 1, "density": 1.5}}],
            },
            ["models[0].parameters.density: 'density' must be between 0.0 and 1.0, got 1.5"],
        ),
        "zero weights": (
            {
                "merge_method": "linear",
                "models": [
                    {"model": str(a), "parameters": {"weight": 1}},
                    {"model": str(b), "parameters": {"weight": -1}},
                ],
            },
            ["the weights sum to 0"],
        ),
        "ties without a model": (
            {"merge_method": "ties", "base_model": str(a), "models": [{"model": str(a)}]},
            ["models: ties needs at least 1 model besides the base_model"],
        ),
        "union tokenizer": (
            {**s, "models": one, "tokenizer_source": "union"},
            ["tokenizer_source: 'union' is not supported"],
        ),
    }


CASES = list(_bad_configs(Path("a"), Path("b"), Path("c"), Path("d")))


@pytest.mark.parametrize("case", CASES)
def test_bad_config_names_the_field_and_writes_nothing(tmp_path, pair, third, make_checkpoint, case):
    other_shape = make_checkpoint(seed=1, intermediate_size=96) if case == "shapes" else third
    config, expected = _bad_configs(*pair, third, other_shape)[case]
    with pytest.raises(BranchmergeError) as e:
        run_merge(config, tmp_path / "out", show_progress=False)
    for text in expected:
        assert text in str(e.value)
    assert str(e.value).startswith("merge config: ")
    assert list(tmp_path.iterdir()) == []


def test_yaml_errors_name_the_file(tmp_path, pair):
    path = tmp_path / "merge.yaml"
    path.write_text(
        f"merge_method: slerp\nbase_model: {pair[0]}\nmodels:\n  - model: {pair[1]}\n    weight: 1\n"
    )
    with pytest.raises(BranchmergeError, match=r"merge\.yaml: models\[0\]\.weight: unknown key"):
        run_merge(path, tmp_path / "out", show_progress=False)
    path.write_text(f"merge_method: slerp\nbase_model: {pair[0]}\nmodels: [{{model: {pair[1]}}}]\n")
    with pytest.raises(BranchmergeError, match=r"merge\.yaml: parameters\.t: slerp needs 't'"):
        run_merge(load_merge_config(path), tmp_path / "out", show_progress=False)  # as the CLI calls it
    path.write_text("merge_method: [unclosed\n")
    with pytest.raises(BranchmergeError, match=r"merge\.yaml: not valid YAML"):
        load_merge_config(path)
    with pytest.raises(BranchmergeError, match="merge config not found"):
        load_merge_config(tmp_path / "nope.yaml")
    path.write_text(
        f"merge_method: slerp\nbase_model: {pair[0]}\nmodels: [{{model: {pair[1]}}}]\nparameters: {{t: 2}}\n"
    )
    assert (
        run_merge(path, tmp_path / "out", show_progress=False).n_tensors > 0
    )  # t is not clamped, as in mergekit


def test_failure_mid_merge_leaves_nothing(tmp_path, pair, monkeypatch):
    def boom(thetas, p):
        raise RuntimeError("disk full")

    monkeypatch.setitem(METHODS, "linear", dataclasses.replace(METHODS["linear"], apply=boom))
    cfg = {"merge_method": "linear", "models": [{"model": str(p), "parameters": {"weight": 1}} for p in pair]}
    with pytest.raises(RuntimeError, match="disk full"):
        run_merge(cfg, tmp_path / "out", show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_inputs_or_foreign_folders(tmp_path, pair):
    a, b = pair
    with pytest.raises(BranchmergeError, match="overlaps the input"):
        run_merge(slerp_cfg(a, b, 0.5), a, show_progress=False)
    with pytest.raises(BranchmergeError, match="overlaps the input"):
        run_merge(slerp_cfg(a, b, 0.5), a.parent, show_progress=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(BranchmergeError, match="not an earlier merge output"):
        run_merge(slerp_cfg(a, b, 0.5), foreign, show_progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    run_merge(slerp_cfg(a, b, 0.5), tmp_path / "out", show_progress=False)
    run_merge(slerp_cfg(a, b, 1), tmp_path / "out", show_progress=False)  # an earlier merge is replaced
    assert torch.equal(sd(tmp_path / "out")["model.norm.weight"], sd(b)["model.norm.weight"])
