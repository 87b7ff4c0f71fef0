"""RegMean's sequential variant (RegMean++): Gram matrices of layer l from the merged layers before it.

By hand on a two-layer linear model, end to end on a tiny Qwen3 against a direct forward pass through the merged
output, `sequential: false` against the plain merge bit for bit, and bad input."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from branchmerge.cli.main import app
from branchmerge.errors import BranchmergeError
from branchmerge.merge import calibration, run_merge
from branchmerge.merge.calibration_sequential import sequential_grams
from branchmerge.merge.methods import METHODS, TensorParams
from branchmerge.merge.methods.regmean import regmean
from branchmerge.merge.plan import TensorJob
from branchmerge.records import write_jsonl
from branchmerge.tinylab.domains import DOMAINS as DOMAIN_TABLE
from sft_fixtures import untokenized_examples

DOMAINS = sorted(DOMAIN_TABLE)[:2]

# ---- by hand: embeddings -> layer 0 -> layer 1, all linear ---------------------------------------------------


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.proj = nn.Linear(d, d, bias=False)


class TwoLayers(nn.Module):
    """Named like a transformers causal LM (model.embed_tokens, model.layers.N.*), two linear layers in sequence."""

    def __init__(self, vocab: int, d: int):
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, d)
        self.model.layers = nn.ModuleList([Block(d), Block(d)])

    def forward(self, input_ids, attention_mask=None):
        h = self.model.embed_tokens(input_ids)
        for block in self.model.layers:
            h = block.proj(h)
        return SimpleNamespace(logits=h)


NAMES = ["model.embed_tokens.weight", "model.layers.0.proj.weight", "model.layers.1.proj.weight"]


def gram(X: np.ndarray) -> np.ndarray:
    return X.T @ X / len(X)


def closed_form(Ws: list[np.ndarray], Gs: list[np.ndarray]) -> np.ndarray:
    """(sum G_i)^-1 sum G_i W_i^T, transposed back to torch's d_out x d_in."""
    return (np.linalg.inv(sum(Gs)) @ sum(G @ W.T for G, W in zip(Gs, Ws, strict=True))).T


def test_layer_two_grams_come_from_layer_one_merged_by_hand():
    rng = np.random.default_rng(0)
    V, d = 5, 3
    experts = [{n: rng.normal(size=(V, d) if "embed" in n else (d, d)) for n in NAMES} for _ in range(2)]
    ids = [[[0, 1, 2], [3, 1]], [[2, 4, 4, 0]]]  # expert 0: two examples of unequal length (one is padded)
    encoded = [[(row, []) for row in rows] for rows in ids]
    params = TensorParams(
        base=None, params={"alpha": 1.0, "sequential": True}, model_params=[{"weight": 1.0}] * 2
    )
    jobs = [TensorJob(n, (V, d) if "embed" in n else (d, d), torch.float32, params, None) for n in NAMES]
    saved: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    model = TwoLayers(V, d)
    sequential_grams(
        model,
        jobs,
        2,
        lambda i, name: torch.tensor(experts[i][name], dtype=torch.float32),
        encoded,
        lambda job, raw: METHODS["regmean"].apply(raw, job.params),
        lambda i, stage, g: saved.__setitem__((i, stage), g),
        batch_size=8,
        pad_ids=[4, 0],
    )
    # merged embeddings: the average (not a Linear); each expert's tokens, padding left out
    E = (experts[0][NAMES[0]] + experts[1][NAMES[0]]) / 2
    X0 = [np.concatenate([E[row] for row in rows]) for rows in ids]
    G0 = [gram(x) for x in X0]
    W0 = closed_form([e[NAMES[1]] for e in experts], G0)
    # layer 1's inputs: the examples run through the *merged* layer 0
    X1 = [x @ W0.T for x in X0]
    G1 = [gram(x) for x in X1]
    W1 = closed_form([e[NAMES[2]] for e in experts], G1)
    for i in range(2):
        np.testing.assert_allclose(saved[(i, 0)][NAMES[1]].numpy(), G0[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(saved[(i, 1)][NAMES[2]].numpy(), G1[i], rtol=1e-5, atol=1e-6)
    state = model.state_dict()
    for name, expected in zip(NAMES, (E, W0, W1), strict=True):
        np.testing.assert_allclose(state[name].numpy(), expected, rtol=1e-4, atol=1e-5)
    # control: plain RegMean's layer-1 Gram (expert 0 alone: its own embeddings and layer 0) is another matrix
    own = np.concatenate([experts[0][NAMES[0]][row] for row in ids[0]]) @ experts[0][NAMES[1]].T
    assert np.abs(gram(own) - G1[0]).max() > 0.1
    assert set(saved) == {(0, 0), (1, 0), (0, 1), (1, 1)}  # no Gram for the embeddings' stage


# ---- end to end on tiny Qwen3 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def experts(make_checkpoint) -> tuple[Path, Path]:
    return make_checkpoint(seed=41), make_checkpoint(seed=42)


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "sft.jsonl"
    write_jsonl(path, untokenized_examples(DOMAINS, 4, seed=7))
    return path


def cfg(experts: tuple[Path, Path], sft: Path, cache: Path, **params) -> dict:
    return {
        "merge_method": "regmean",
        "models": [
            {"model": str(e), "calibration": {"path": str(sft), "domain": d}}
            for e, d in zip(experts, DOMAINS, strict=True)
        ],
        "parameters": params,
        "calibration": {"n": 3, "max_length": 256, "batch_size": 2, "cache_dir": str(cache)},
    }


def sd(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


LINEARS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj")


def reference_grams(merged: Path, expert: Path, layer: int, examples: list) -> dict[str, torch.Tensor]:
    """The merged output with expert's layer `layer` swapped in, run on the examples one at a time (no padding)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    prefix = f"model.layers.{layer}."
    own = {k: v for k, v in sd(expert).items() if k.startswith(prefix)}
    model.load_state_dict(own, strict=False)
    inputs: dict[str, list[torch.Tensor]] = {m: [] for m in LINEARS}
    for m in LINEARS:
        model.get_submodule(prefix + m).register_forward_pre_hook(
            lambda mod, args, m=m: inputs[m].append(args[0][0].double())
        )
    with torch.no_grad():
        for ids in examples:
            model(input_ids=torch.tensor([ids]))
    grams = {}
    for m, xs in inputs.items():
        X = torch.cat(xs)
        grams[f"{prefix}{m}.weight"] = (X.T @ X / len(X)).float()
    return grams


def test_sequential_end_to_end_matches_a_forward_pass_through_the_merged_output(
    tmp_path, experts, sft_file, tokenizer
):
    cache = tmp_path / "cache"
    out = tmp_path / "runs" / "seq"
    run_merge(cfg(experts, sft_file, cache, alpha=0.8, sequential=True), out, show_progress=False)
    merged, inputs = sd(out), [sd(e) for e in experts]
    assert sorted(p.name for p in out.parent.iterdir()) == ["seq"]  # the layer-by-layer Grams are gone
    assert not cache.exists()  # and were never cached
    examples = [
        calibration.encode_for_gram(
            tokenizer,
            calibration.sample(
                calibration.read_source(calibration.CalibrationSource(path=str(sft_file), domain=d), "x"),
                3,
                0,
            ),
            256,
        )
        for d in DOMAINS
    ]
    for layer in (0, 1):
        G = [
            reference_grams(out, e, layer, [ids for ids, _ in ex])
            for e, ex in zip(experts, examples, strict=True)
        ]
        for name in G[0]:
            expected = regmean([w[name] for w in inputs], [g[name] for g in G], alpha=0.8)
            torch.testing.assert_close(merged[name], expected, rtol=1e-4, atol=2e-5)
    for name in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.1.input_layernorm.weight"):
        torch.testing.assert_close(merged[name], (inputs[0][name] + inputs[1][name]) / 2)

    plain = tmp_path / "runs" / "plain"
    run_merge(cfg(experts, sft_file, cache, alpha=0.8), plain, show_progress=False)
    q1 = "model.layers.1.self_attn.q_proj.weight"
    assert (sd(plain)[q1] - merged[q1]).abs().max() > 1e-3  # the merged layer 0 moved layer 1's inputs


def test_sequential_false_is_the_plain_merge_bit_for_bit(tmp_path, experts, sft_file):
    cache = tmp_path / "cache"
    run_merge(cfg(experts, sft_file, cache, alpha=0.8), tmp_path / "default", show_progress=False)
    off = cfg(experts, sft_file, tmp_path / "cache-off", alpha=0.8, sequential=False)
    run_merge(off, tmp_path / "off", show_progress=False)
    default, result = sd(tmp_path / "default"), sd(tmp_path / "off")
    assert default.keys() == result.keys()
    assert all(torch.equal(default[k], result[k]) for k in default)
    # and both are RegMean of the experts' own (cached) Gram matrices, as before the option existed
    grams = [load_file(next((tmp_path / "cache-off").glob(f"gram-{e.name}-*"))) for e in experts]
    inputs = [sd(e) for e in experts]
    q0 = "model.layers.0.self_attn.q_proj.weight"
    expected = regmean([w[q0] for w in inputs], [g[q0] for g in grams], alpha=0.8)
    assert torch.equal(result[q0], expected)


# ---- bad input -------------------------------------------------------------------------------------------------


def test_sequential_must_be_one_value_for_the_whole_merge(tmp_path, experts, sft_file):
    rules = [{"filter": "layers.0", "value": True}, {"value": False}]
    for value in (rules, 1):
        with pytest.raises(
            BranchmergeError, match=r"parameters\.sequential: must be true or false for the whole"
        ):
            run_merge(
                cfg(experts, sft_file, tmp_path / "cache", sequential=value),
                tmp_path / "out",
                show_progress=False,
            )
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg(experts, sft_file, tmp_path / "cache", sequential=rules)))
    result = CliRunner().invoke(app, ["merge", str(path), str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "merge.yaml" in lines[0] and "parameters.sequential" in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merge.yaml"]  # no output, no cache, no work folder
