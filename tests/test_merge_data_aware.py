"""RegMean and Fisher averaging: the formulas by hand, the statistics against direct computation, the engine end
to end on tiny random Qwen3 models (with its cache), and bad calibration input."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from branchmerge.cli.main import app
from branchmerge.errors import BranchmergeError
from branchmerge.merge import calibration, run_merge
from branchmerge.merge.calibration_stats import IGNORE, fisher_statistics, gram_statistics
from branchmerge.merge.methods.fisher import fisher_merge
from branchmerge.merge.methods.regmean import reduce_off_diagonal, regmean
from branchmerge.records import write_jsonl
from branchmerge.tinylab.domains import DOMAINS as DOMAIN_TABLE
from sft_fixtures import untokenized_examples

DOMAINS = sorted(DOMAIN_TABLE)

# ---- the formulas -------------------------------------------------------------------------------------------


def test_regmean_diagonal_grams_by_hand():
    # One output, two inputs. W1 = [1, 0], W2 = [0, 1]; G1 = diag(2, 1), G2 = diag(1, 3):
    # W* = (G1 + G2)^-1 (G1 W1^T + G2 W2^T) = diag(1/3, 1/4) (2, 3) = (2/3, 3/4).
    W1, W2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    G1, G2 = torch.diag(torch.tensor([2.0, 1.0])), torch.diag(torch.tensor([1.0, 3.0]))
    assert regmean([W1, W2], [G1, G2], alpha=1.0)[0].tolist() == pytest.approx([2 / 3, 3 / 4])


def test_regmean_two_experts_matches_numpy_closed_form():
    rng = np.random.default_rng(0)
    W = [rng.normal(size=(3, 4)) for _ in range(2)]  # torch layout: d_out x d_in
    X = [rng.normal(size=(10, 4)) for _ in range(2)]  # each expert's inputs
    G = [x.T @ x for x in X]
    expected = (np.linalg.inv(G[0] + G[1]) @ (G[0] @ W[0].T + G[1] @ W[1].T)).T
    got = regmean([torch.tensor(w) for w in W], [torch.tensor(g) for g in G], alpha=1.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    # and it is the least-squares solution: the gradient of sum_i ||X_i W^T - X_i W_i^T||^2 vanishes there
    grad = sum(x.T @ (x @ got.double().numpy().T - x @ w.T) for x, w in zip(X, W, strict=True))
    assert np.abs(grad).max() < 1e-4


def test_regmean_alpha_shrinks_off_diagonals_and_zero_gives_a_feature_weighted_average():
    G = torch.tensor([[4.0, 2.0], [2.0, 9.0]])
    assert reduce_off_diagonal(G, 0.5).tolist() == [[4.0, 1.0], [1.0, 9.0]]
    W1, W2 = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 6.0]])
    G2 = torch.tensor([[4.0, -1.0], [-1.0, 1.0]])
    # alpha = 0: per input feature k, (G1_kk W1_k + G2_kk W2_k) / (G1_kk + G2_kk)
    got = regmean([W1, W2], [G, G2], alpha=0.0)
    assert got[0].tolist() == pytest.approx([(4 * 1 + 4 * 3) / 8, (9 * 2 + 1 * 6) / 10])
    same = regmean([W1, W1], [G, G2], alpha=0.7)  # identical experts: the merge is that expert
    assert same[0].tolist() == pytest.approx(W1[0].tolist())


def test_regmean_input_feature_no_token_activates_gets_the_average():
    W1, W2 = torch.tensor([[1.0, 5.0]]), torch.tensor([[4.0, 7.0]])
    G1, G2 = torch.diag(torch.tensor([1.0, 0.0])), torch.diag(torch.tensor([2.0, 0.0]))
    # feature 0: (1*1 + 2*4) / 3 = 3; feature 1 (never active): (5 + 7) / 2 = 6
    assert regmean([W1, W2], [G1, G2], alpha=1.0)[0].tolist() == pytest.approx([3.0, 6.0])


def test_regmean_weights_scale_each_gram():
    W1, W2 = torch.tensor([[1.0]]), torch.tensor([[4.0]])
    G = torch.tensor([[2.0]])
    assert float(regmean([W1, W2], [G, G], lambdas=[3.0, 1.0])[0, 0]) == pytest.approx((3 * 1 + 4) / 4)


def test_fisher_merge_by_hand_and_epsilon_floor():
    thetas = [torch.tensor([1.0, 1.0, 5.0]), torch.tensor([3.0, 3.0, 7.0])]
    fishers = [torch.tensor([3.0, 0.0, 0.0]), torch.tensor([1.0, 2.0, 0.0])]
    got = fisher_merge(thetas, fishers, epsilon=1e-6)
    # (3*1 + 1*3)/4 = 1.5; F1 floored to 1e-6 next to 2: ~3; both 0 -> floored equally -> average 6
    assert got.tolist() == pytest.approx([1.5, 3.0, 6.0], abs=1e-5)
    assert fisher_merge(thetas, fishers, lambdas=[1.0, 3.0])[0] == pytest.approx((3 + 9) / 6)


# ---- the statistics on a toy model with known inputs and gradients -----------------------------------------


class Toy(nn.Module):
    """logits = lm(emb(ids)): the lm layer's inputs are embedding rows, its gradients are (onehot - p) e^T."""

    def __init__(self, emb: torch.Tensor, lm: torch.Tensor):
        super().__init__()
        self.emb = nn.Embedding(*emb.shape, _weight=emb.clone())
        self.lm = nn.Linear(lm.shape[1], lm.shape[0], bias=False)
        self.lm.weight.data = lm.clone()

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.lm(self.emb(input_ids)))


def test_gram_is_mean_outer_product_of_inputs_without_padding():
    emb = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [5.0, 5.0]])
    toy = Toy(emb, torch.zeros(4, 2))
    encoded = [([0, 1, 2], [IGNORE] * 3), ([2], [IGNORE]), ([1, 1], [IGNORE] * 2)]
    stats, tokens = gram_statistics(toy, encoded, {"lm.weight"}, batch_size=2, pad_id=3)  # pad row is 5, 5
    X = emb[[0, 1, 2, 2, 1, 1]]
    assert tokens == 6
    assert torch.allclose(stats["lm.weight"], X.T @ X / 6)


def test_fisher_squares_per_example_gradients():
    # V = 2 tokens, d = 1, e = 1 for token 0, lm weights 0: p = (1/2, 1/2) and for a target y,
    # d log p_y / d w_k = (1[k = y] - 1/2) e: squared, 1/4 for both k whatever y.
    # Targets 0 and 1 give opposite gradients, so a batch gradient would be 0; the Fisher is 1/4.
    toy = Toy(torch.tensor([[1.0], [0.0]]), torch.zeros(2, 1))
    encoded = [([0, 0], [IGNORE, 0]), ([0, 1], [IGNORE, 1])]
    F = fisher_statistics(toy, encoded, {"lm.weight", "emb.weight"})
    assert F["lm.weight"].flatten().tolist() == pytest.approx([0.25, 0.25])
    assert F["emb.weight"].abs().max() == 0  # d/de = w_y - sum_k p_k w_k = 0 with w = 0


# ---- end to end on tiny Qwen3 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def experts(make_checkpoint) -> tuple[Path, Path]:
    return make_checkpoint(seed=31), make_checkpoint(seed=32)


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> Path:
    rows = untokenized_examples(DOMAINS[:2], 4, seed=7)
    path = tmp_path_factory.mktemp("calib") / "sft.jsonl"
    write_jsonl(path, rows)
    return path


def data_cfg(method: str, experts: tuple[Path, Path], sft: Path, cache: Path, **params) -> dict:
    return {
        "merge_method": method,
        "models": [
            {"model": str(e), "calibration": {"path": str(sft), "domain": d}}
            for e, d in zip(experts, DOMAINS[:2], strict=True)
        ],
        "parameters": params,
        "calibration": {"n": 3, "max_length": 256, "batch_size": 2, "cache_dir": str(cache)},
    }


def sd(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def cached(cache: Path, kind: str) -> list[dict[str, torch.Tensor]]:
    files = sorted(cache.glob(f"{kind}-*.safetensors"))
    assert len(files) == 2
    order = {e: i for i, e in enumerate(("ckpt31", "ckpt32"))}
    return [load_file(f) for f in sorted(files, key=lambda f: order[f.name.split("-")[1][:6]])]


Q0 = "model.layers.0.self_attn.q_proj.weight"


def test_regmean_end_to_end_merges_linears_averages_the_rest_and_reuses_its_cache(
    tmp_path, experts, sft_file, tokenizer, monkeypatch
):
    cache = tmp_path / "cache"
    run_merge(data_cfg("regmean", experts, sft_file, cache, alpha=0.8), tmp_path / "out", show_progress=False)
    merged, inputs, grams = sd(tmp_path / "out"), [sd(e) for e in experts], cached(cache, "gram")
    assert "model.embed_tokens.weight" not in grams[0]  # not a Linear (and the tied lm_head is stored as it)
    expected = regmean([w[Q0] for w in inputs], [g[Q0] for g in grams], alpha=0.8)
    assert torch.allclose(merged[Q0], expected, atol=1e-6)
    assert not torch.allclose(merged[Q0], (inputs[0][Q0] + inputs[1][Q0]) / 2, atol=1e-3)
    for name in ("model.embed_tokens.weight", "model.norm.weight"):
        assert torch.allclose(merged[name], (inputs[0][name] + inputs[1][name]) / 2)

    # the cached Gram of layer 0's q_proj is X^T X / N with X = input_layernorm(embeddings) of 3 sampled examples
    from transformers import AutoModelForCausalLM

    from branchmerge.merge.search_score import encode_examples

    model = AutoModelForCausalLM.from_pretrained(experts[0], dtype=torch.float32)
    source = calibration.CalibrationSource(path=str(sft_file), domain=DOMAINS[0])
    examples = calibration.sample(calibration.read_source(source, "x"), 3, 0)
    with torch.no_grad():
        X = torch.cat(
            [
                model.model.layers[0].input_layernorm(model.model.embed_tokens(torch.tensor(ids)))
                for ids, _ in encode_examples(tokenizer, examples, "x")
            ]
        )
    assert torch.allclose(grams[0][Q0], (X.double().T @ X.double() / len(X)).float(), atol=1e-5)

    def no_recompute(*args, **kwargs):
        raise AssertionError("statistics recomputed")

    monkeypatch.setattr(calibration, "compute_statistics", no_recompute)
    run_merge(data_cfg("regmean", experts, sft_file, cache, alpha=0.8), tmp_path / "out", show_progress=False)
    assert torch.equal(sd(tmp_path / "out")[Q0], merged[Q0])


def test_fisher_end_to_end_and_the_merged_model_runs(tmp_path, experts, sft_file, tokenizer):
    cache = tmp_path / "cache"
    run_merge(data_cfg("fisher", experts, sft_file, cache), tmp_path / "out", show_progress=False)
    merged, inputs, fishers = sd(tmp_path / "out"), [sd(e) for e in experts], cached(cache, "fisher")
    assert set(fishers[0]) == set(inputs[0])  # every stored tensor is a parameter, the tied embedding once
    for name in (Q0, "model.embed_tokens.weight", "model.norm.weight"):
        expected = fisher_merge([w[name] for w in inputs], [f[name] for f in fishers], epsilon=1e-6)
        assert torch.allclose(merged[name], expected, atol=1e-6)
    # the cached Fisher of the final norm: per sampled example, backward of the assistant tokens' log-likelihood
    from transformers import AutoModelForCausalLM

    from branchmerge.merge.search_score import encode_examples

    expert = AutoModelForCausalLM.from_pretrained(experts[0], dtype=torch.float32)
    source = calibration.CalibrationSource(path=str(sft_file), domain=DOMAINS[0])
    encoded = encode_examples(tokenizer, calibration.sample(calibration.read_source(source, "x"), 3, 0), "x")
    F_norm = torch.zeros_like(expert.model.norm.weight)
    for ids, labels in encoded:
        expert.zero_grad()
        logits = expert(input_ids=torch.tensor([ids])).logits[0, :-1]
        torch.nn.functional.cross_entropy(logits, torch.tensor(labels[1:]), reduction="sum").backward()
        F_norm += expert.model.norm.weight.grad.square()
    assert torch.allclose(fishers[0]["model.norm.weight"], F_norm / 3, rtol=1e-4, atol=1e-9)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


# ---- bad input ---------------------------------------------------------------------------------------------------


def test_bad_calibration_names_the_field_and_writes_nothing(tmp_path, experts, sft_file, make_checkpoint):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    base = data_cfg("regmean", experts, sft_file, tmp_path / "cache")
    m0, m1 = base["models"]
    cases = {
        "models[1].calibration: regmean needs this model's own calibration examples": [
            m0,
            {"model": m1["model"]},
        ],
        "models[0].calibration.path: /no/such.jsonl: calibration file not found": [
            {**m0, "calibration": "/no/such.jsonl"},
            m1,
        ],
        f"models[0].calibration.path: {empty}: has no examples": [{**m0, "calibration": str(empty)}, m1],
        "models[1].calibration.domain: ": [
            m0,
            {**m1, "calibration": {"path": str(sft_file), "domain": "poetry"}},
        ],
    }
    out = tmp_path / "runs"
    out.mkdir()
    for expected, models in cases.items():
        with pytest.raises(BranchmergeError) as e:
            run_merge({**base, "models": models}, out / "merged", show_progress=False)
        assert expected in str(e.value), str(e.value)
    assert f"has no examples of domain 'poetry' (domains there: {DOMAINS[0]}, {DOMAINS[1]})" in str(e.value)
    with pytest.raises(BranchmergeError, match=r"models\[0\]\.calibration: linear does not use calibration"):
        run_merge(
            {**base, "merge_method": "linear", "parameters": {"weight": 1}},
            out / "merged",
            show_progress=False,
        )
    other_shape = make_checkpoint(seed=33, intermediate_size=96)
    with pytest.raises(
        BranchmergeError, match=r"models\[1\]\.model: tensor 'model.layers.0.mlp.down_proj.weight' has"
    ):
        run_merge(
            {**base, "models": [m0, {**m1, "model": str(other_shape)}]}, out / "merged", show_progress=False
        )
    assert list(out.iterdir()) == [] and not (tmp_path / "cache").exists()


def test_cli_bad_calibration_is_one_line_and_exit_2(tmp_path, experts, sft_file):
    import yaml

    cfg = data_cfg("fisher", experts, sft_file, tmp_path / "cache")
    cfg["models"][0]["calibration"] = str(tmp_path / "missing.jsonl")
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["merge", str(path), str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "models[0].calibration.path" in lines[0] and "merge.yaml" in lines[0]
    assert not (tmp_path / "out").exists()
