"""Merging models with different vocabularies through tokenizer_source: rows aligned by token string."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from branchmerge.errors import BranchmergeError
from branchmerge.merge import run_merge
from branchmerge.merge.vocab import align_rows, token_sources
from branchmerge.tinylab.modeling import random_model, save_checkpoint, tiny_qwen3_config
from branchmerge.tinylab.tokenizer import build_tokenizer

EXTRA = ["<tool_call>", "</tool_call>", "<extra_0>"]


@pytest.fixture(scope="module")
def two_vocabs(tmp_path_factory) -> tuple[Path, Path]:
    """A with the tiny tokenizer; B with the same tokenizer plus three added tokens (ids appended at the end)."""
    out = []
    for seed, extra in ((41, []), (42, EXTRA)):
        tok = build_tokenizer()
        tok.add_tokens(extra)
        folder = tmp_path_factory.mktemp(f"vocab{seed}")
        save_checkpoint(
            random_model(tiny_qwen3_config(tok, tie_word_embeddings=False), seed=seed), tok, folder
        )
        out.append(folder)
    return out[0], out[1]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def ref_slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a64, b64 = a.double(), b.double()
    om = math.acos(float((a64 * b64).sum() / (a64.norm() * b64.norm())))
    return (math.sin((1 - t) * om) / math.sin(om) * a64 + math.sin(t * om) / math.sin(om) * b64).float()


def cfg(a: Path, b: Path, **extra) -> dict:
    return {
        "merge_method": "slerp",
        "base_model": str(a),
        "models": [{"model": str(b)}],
        "parameters": {"t": 0.4},
        **extra,
    }


def test_different_vocabularies_without_tokenizer_source_name_the_tensor(tmp_path, two_vocabs):
    with pytest.raises(BranchmergeError, match=r"model.embed_tokens.weight.*set tokenizer_source"):
        run_merge(cfg(*two_vocabs), tmp_path / "out", show_progress=False)


@pytest.mark.parametrize("source", ["base", "b"])
def test_rows_are_aligned_to_the_tokenizer_source(tmp_path, two_vocabs, source):
    a, b = two_vocabs
    wa, wb = weights(a), weights(b)
    n_a = wa["model.embed_tokens.weight"].shape[0]
    run_merge(
        cfg(a, b, tokenizer_source="base" if source == "base" else str(b)),
        tmp_path / "out",
        show_progress=False,
    )
    got = weights(tmp_path / "out")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if source == "base":  # B's extra rows are dropped; the shared tokens keep their ids
            want = ref_slerp(0.4, wa[name], wb[name][:n_a])
        else:  # A lacks the extra tokens: B is the only donor, so A's aligned matrix takes B's rows there
            want = ref_slerp(0.4, torch.cat([wa[name], wb[name][n_a:]]), wb[name])
        torch.testing.assert_close(got[name], want, atol=1e-6, rtol=1e-5)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["vocab_size"] == got["model.embed_tokens.weight"].shape[0]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] == config["vocab_size"]


def test_align_rows_fills_missing_tokens_as_mergekit_does():
    out_vocab = {"x": 0, "y": 1, "z": 2, "w": 3}
    vocabs = [{"x": 0, "y": 1}, {"y": 0, "x": 1, "z": 2}, {"x": 0, "y": 1, "z": 2}]
    index = token_sources(out_vocab, vocabs, base=0)
    assert index.tolist() == [[0, 1, -1, -1], [1, 0, 2, -1], [0, 1, 2, -1]]
    rows = [
        torch.tensor([[1.0], [2.0]]),
        torch.tensor([[20.0], [10.0], [30.0]]),
        torch.tensor([[5.0], [6.0], [7.0]]),
    ]
    got = align_rows(rows, index, base=0)
    # x, y: each model's own row (model 1 permuted); z: models 1 and 2 have it, the base does not -> their mean
    # for the base; w: nobody has it -> zeros everywhere
    assert [r.flatten().tolist() for r in got] == [[1, 2, 18.5, 0], [10, 20, 30, 0], [5, 6, 7, 0]]


# ---- pickled .bin inputs -----------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs `touch MARKER` — what weights_only=True must refuse to do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _as_bin(src: Path, dst: Path, extra: object = None) -> Path:
    import shutil

    dst.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, dst / f)
    state = weights(src)
    if extra is not None:
        state["evil"] = extra  # type: ignore[assignment]
    torch.save(state, dst / "pytorch_model.bin")
    return dst


def test_bin_checkpoints_merge_like_their_safetensors_twin(tmp_path, two_vocabs):
    a, b = two_vocabs
    a_bin = _as_bin(a, tmp_path / "a-bin")
    base = {"tokenizer_source": str(a)}
    run_merge(cfg(a, b, **base), tmp_path / "st", show_progress=False)
    run_merge(cfg(a_bin, b, **base), tmp_path / "bin", show_progress=False)
    got, want = weights(tmp_path / "bin"), weights(tmp_path / "st")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_a_pickle_that_runs_code_is_refused_not_executed(tmp_path, two_vocabs):
    a, b = two_vocabs
    marker = tmp_path / "pwned"
    evil = _as_bin(a, tmp_path / "evil", extra=_Payload(marker))
    with pytest.raises(
        BranchmergeError, match=r"evil/pytorch_model.bin: refused or unreadable with weights_only=True"
    ):
        run_merge(cfg(evil, b, tokenizer_source=str(a)), tmp_path / "out", show_progress=False)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
