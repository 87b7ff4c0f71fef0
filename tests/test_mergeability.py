"""The mergeability verdict: its thresholds on hand-set signals, and on synthetic task vectors of tiny Qwen3
models (identical, independent, opposed), with and without the off-domain losses training logs."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from branchmerge.cli.main import app
from branchmerge.errors import BranchmergeError
from branchmerge.merge.explain import explain_merge
from branchmerge.merge.forgetting import (
    OFFDOMAIN_FILE,
    forgetting,
    measure_offdomain_loss,
    read_offdomain_loss,
    write_offdomain_loss,
)
from branchmerge.merge.mergeability import judge, mergeability
from branchmerge.records import OffDomainLoss, write_jsonl
from sft_fixtures import untokenized_examples

NAN = math.nan


# ---- the thresholds --------------------------------------------------------------------------------------------


def test_judge_thresholds():
    logged = {"a": 0.01, "b": 0.02}
    assert judge([0.03, 0.05], 0.25, 0.5, 2, logged)[0] == "likely"  # v5-like, little forgetting
    assert judge([0.20, 0.22], 0.65, 0.5, 2, logged)[:2] == (
        "unlikely",
        "the experts moved far from the base (‖δ‖/‖θ‖ up to 0.22 > 0.15)",
    )  # v3-like
    assert judge([0.09, 0.095], 0.16, 0.5, 2, logged)[0] == "risky"  # v2-like
    assert judge([0.03, 0.03], -0.15, 0.5, 2, logged)[0] == "risky"
    assert judge([0.03, 0.03], -0.02, 0.5, 2, logged)[0] == "likely"  # orthogonal experts are fine
    assert judge([0.03, 0.03], -0.5, 0.5, 2, logged)[0] == "unlikely"
    assert judge([0.03, 0.03, 0.03], 0.2, 0.95, 3, {**logged, "c": 0})[0] == "risky"  # chance is 0.75
    assert judge([0.03, 0.03, 0.03], 0.2, 0.85, 3, {**logged, "c": 0})[0] == "likely"
    verdict, reason, _ = judge([0.04, 0.04], 0.5, 0.5, 2, {"a": 0.3, "b": 0.0})  # v1-like: small, but forgot
    assert (verdict, reason) == ("unlikely", "a forgot the other domains (their loss +30% over the base's)")
    assert judge([0.04, 0.04], 0.5, 0.5, 2, {"a": 0.1, "b": 0.0})[0] == "risky"


def test_without_every_forgetting_log_small_deltas_are_only_risky_unless_the_experts_coincide():
    verdict, reason, _ = judge([0.03, 0.05], 0.25, 0.5, 2, {"a": 0.0})
    assert verdict == "risky" and "not logged for every expert" in reason
    assert judge([0.03, 0.03], 0.99, 0.01, 2, {})[0] == "likely"
    assert judge([0.03], NAN, NAN, 1, {})[0] == "risky"  # one expert: no cosine, no conflicts
    assert judge([0.03], NAN, NAN, 1, {"a": 0.0})[0] == "likely"


def test_forgetting_is_the_mean_relative_rise_on_the_other_domains():
    r = OffDomainLoss(
        domain="add",
        expert={"add": 0.2, "sort": 1.5, "compare": 1.0},
        base={"add": 0.8, "sort": 1.0, "compare": 1.0},
    )
    assert forgetting(r) == pytest.approx((0.5 + 0.0) / 2)
    assert forgetting(OffDomainLoss(domain="add", expert={"add": 0.1}, base={"add": 1.0})) is None


# ---- synthetic task vectors --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(make_checkpoint) -> Path:
    return make_checkpoint(seed=41)


def expert(base: Path, out: Path, delta_of) -> Path:
    """A copy of `base` with theta = theta_base + delta_of(name, theta_base) for every tensor."""
    weights = load_file(base / "model.safetensors")
    weights = {n: t + delta_of(n, t) for n, t in weights.items()}
    shutil.copytree(base, out)
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def noise(seed: int, scale: float):
    g = torch.Generator().manual_seed(seed)
    return lambda n, t: scale * t * torch.randn(t.shape, generator=g)


def test_identical_experts_are_likely(base, tmp_path):
    a = expert(base, tmp_path / "a", lambda n, t: 0.01 * t)
    b = expert(base, tmp_path / "b", lambda n, t: 0.01 * t)
    m = mergeability(base, [a, b])
    assert m.verdict == "likely" and "nearly the same model" in m.reason
    assert m.rel_delta == pytest.approx([0.01, 0.01], rel=1e-4)
    assert m.mean_cosine == pytest.approx(1.0, abs=1e-6) and m.sign_conflict == 0.0


def test_large_opposing_deltas_are_unlikely(base, tmp_path):
    a = expert(base, tmp_path / "a", lambda n, t: 0.3 * t)
    b = expert(base, tmp_path / "b", lambda n, t: -0.3 * t)
    m = mergeability(base, [a, b])
    assert m.verdict == "unlikely"
    assert m.mean_cosine == pytest.approx(-1.0, abs=1e-6) and m.sign_conflict == 1.0
    assert any("opposite directions" in f for f in m.findings)


def test_embedding_only_deltas_vanish_without_embeddings(base, tmp_path):
    a = expert(base, tmp_path / "a", lambda n, t: 3.0 * t if "embed_tokens" in n else 0 * t)
    b = expert(base, tmp_path / "b", lambda n, t: 0.01 * t)
    m = mergeability(base, [a, b])
    assert m.rel_delta[0] > 0.15 and m.rel_delta_no_embed == pytest.approx([0.0, 0.01], abs=1e-6)
    assert m.verdict == "unlikely"


def test_independent_small_experts_need_their_forgetting_logs(base, tmp_path):
    a = expert(base, tmp_path / "add", noise(1, 0.02))
    b = expert(base, tmp_path / "sort", noise(2, 0.02))
    m = mergeability(base, [a, b])
    assert abs(m.mean_cosine) < 0.1 and m.sign_conflict == pytest.approx(0.5, abs=0.05)
    assert m.verdict == "risky" and "not logged" in m.reason and m.forgetting == {}
    kept = {"add": 1.0, "sort": 1.0}
    write_offdomain_loss(a, OffDomainLoss(domain="add", expert={"add": 0.6, "sort": 1.01}, base=kept))
    write_offdomain_loss(b, OffDomainLoss(domain="sort", expert={"add": 1.02, "sort": 0.7}, base=kept))
    m = mergeability(base, [a, b])
    assert m.verdict == "likely" and m.forgetting == pytest.approx({"add": 0.01, "sort": 0.02})
    write_offdomain_loss(b, OffDomainLoss(domain="sort", expert={"add": 1.6, "sort": 0.5}, base=kept))
    m = mergeability(base, [a, b])
    assert (m.verdict, m.reason) == (
        "unlikely",
        "sort forgot the other domains (their loss +60% over the base's)",
    )


def test_measure_offdomain_loss_writes_the_losses_it_measures(base, tmp_path):
    rows = untokenized_examples(("add", "sort"), 2, seed=3)
    write_jsonl(tmp_path / "heldout.jsonl", rows)
    a = expert(base, tmp_path / "a", noise(3, 0.5))
    record = measure_offdomain_loss(a, "add", tmp_path / "heldout.jsonl", base_dir=base)
    assert read_offdomain_loss(a) == record and record.examples == {"add": 2, "sort": 2}
    # the base's "sort" loss, by hand: mean next-token cross-entropy over the assistant tokens
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(base), AutoModelForCausalLM.from_pretrained(base)
    total, count = 0.0, 0
    for ex in rows[2:]:
        enc = tok.apply_chat_template(
            ex.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = torch.tensor(enc["input_ids"]), torch.tensor(enc["assistant_masks"]).bool()
        with torch.no_grad():
            logp = model(input_ids=ids[None]).logits[0, :-1].log_softmax(-1)
        picked = logp[torch.arange(len(ids) - 1), ids[1:]]
        total -= float(picked[mask[1:]].sum())
        count += int(mask[1:].sum())
    assert record.base["sort"] == pytest.approx(total / count, rel=1e-4)
    assert record.expert["sort"] > record.base["sort"]  # 50% noise on every weight hurts
    (a / OFFDOMAIN_FILE).write_text('{"domain": "add", "expert": {}}')
    with pytest.raises(BranchmergeError, match=rf"{OFFDOMAIN_FILE}: base: Field required"):
        read_offdomain_loss(a)


# ---- merge --explain ----------------------------------------------------------------------------------------------


def test_explain_prints_the_verdict_for_a_config_with_a_base(base, tmp_path):
    a = expert(base, tmp_path / "a", lambda n, t: 0.3 * t)
    b = expert(base, tmp_path / "b", lambda n, t: -0.3 * t)
    cfg = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [{"model": str(p), "parameters": {"weight": 1, "density": 0.5}} for p in (a, b)],
    }
    (step,) = explain_merge(cfg, mergeability=True)
    assert step.mergeability is not None and step.mergeability.verdict == "unlikely"
    assert explain_merge(cfg)[0].mergeability is None  # only when asked: it reads the weights
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["merge", str(path), "--explain"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "mergeability: unlikely: the experts moved far from the base" in result.output
    assert "mean cos -1.00" in result.output and "off-domain loss not logged" in result.output
    no_base = {
        "merge_method": "linear",
        "models": [{"model": str(p), "parameters": {"weight": 1}} for p in (a, b)],
    }
    assert explain_merge(no_base, mergeability=True)[0].mergeability is None
