"""Chunked merge math (`methods/chunks.py`): many small chunks give the same bits as one chunk, the sampled
bracket of TIES's k-th largest magnitude is exact (including its fallback), and outputs come in the saved dtype."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from branchmerge.merge.methods import METHODS, TensorParams, chunks, task_vector
from branchmerge.merge.methods.task_vector import drop_random, keep_top_magnitude, top_k


def _rand(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _params(method: str, weights, densities=None, out_dtype=torch.float32, **glob) -> TensorParams:
    spec = METHODS[method]
    params = {k: s.default for k, s in spec.params.items()} | glob
    per_model = [{"weight": w, "density": d} for w, d in zip(weights, densities or [1.0] * len(weights))]
    return TensorParams(base=0, params=params, model_params=[{}, *per_model], tensor="t", out_dtype=out_dtype)


CASES = [
    ("ties", _params("ties", [1.0, 0.6], [0.3, 0.7])),
    ("ties", _params("ties", [1.0, 0.6], [0.3, 0.7], rescale=True)),
    ("ties", _params("ties", [1.0, 0.6], [0.5, 0.5], argsort_ties=True)),
    ("task_arithmetic", _params("task_arithmetic", [0.7, -0.2], **{"lambda": 0.5})),
    ("linear", TensorParams(base=None, params={"normalize": True}, model_params=[{"weight": 2.0}] * 3)),
    ("slerp", TensorParams(base=0, params={"t": 0.3}, model_params=[{}, {}])),
]


@pytest.mark.parametrize(("method", "p"), CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_many_chunks_give_the_bits_of_one(monkeypatch, method, p):
    # bf16 inputs: their deltas have many equal magnitudes, so TIES ties straddle chunk boundaries
    n_inputs = 2 if method == "slerp" else 3
    thetas = [_rand(64, 33, seed=s, dtype=torch.bfloat16) for s in range(n_inputs)]
    one = METHODS[method].apply(thetas, p)
    monkeypatch.setattr(chunks, "CHUNK", 100)
    monkeypatch.setattr(task_vector, "SAMPLE", 256)  # so the bracket is narrow enough to be tested
    many = METHODS[method].apply(thetas, p)
    assert one.dtype == many.dtype == torch.float32
    assert torch.equal(one, many)


@pytest.mark.parametrize("density", [0.001, 0.1, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("values", ["distinct", "bf16", "few"])
def test_top_k_threshold_is_the_kth_largest_of_a_sort(monkeypatch, density, values):
    monkeypatch.setattr(chunks, "CHUNK", 500)
    monkeypatch.setattr(task_vector, "SAMPLE", 512)
    x = _rand(20_000, seed=3).abs()
    if values == "bf16":
        x = x.bfloat16().float()
    elif values == "few":  # four distinct magnitudes: the bracket is one value with thousands of ties
        x = torch.randint(0, 4, (20_000,), generator=torch.Generator().manual_seed(1)).float()
    n, k = x.numel(), max(1, int(density * x.numel()))
    rule = top_k(lambda index: x[index], n, k, l1=True)
    ordered = x.sort(descending=True).values
    assert float(rule.threshold) == float(ordered[k - 1])
    assert rule.ties == k - int((x > rule.threshold).sum())
    assert rule.n_equal == int((x == rule.threshold).sum())
    assert rule.kept_l1 == pytest.approx(float(ordered[:k].double().sum()), rel=1e-12)
    assert rule.l1 == pytest.approx(float(x.double().sum()), rel=1e-12)


@pytest.mark.parametrize("bracket", [(0.0, 0.1), (3.0, float("inf"))], ids=["too-low", "too-high"])
def test_top_k_falls_back_to_all_magnitudes_when_the_sample_misses(monkeypatch, bracket):
    monkeypatch.setattr(chunks, "CHUNK", 500)
    monkeypatch.setattr(task_vector, "_bracket", lambda magnitude, n, k: bracket)
    x = _rand(5000, seed=5).abs()
    rule = top_k(lambda index: x[index], x.numel(), 1000, l1=True)
    assert float(rule.threshold) == float(x.sort(descending=True).values[999])
    assert rule.kept_l1 == pytest.approx(float(x.sort(descending=True).values[:1000].double().sum()))


def test_trim_across_chunks_keeps_tied_entries_in_index_order(monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK", 3)
    delta = torch.tensor([1.0, -3.0, 2.0, -2.0, 2.0, 0.5, 2.0, -1.0, 2.0])  # five |2| around k = 4
    assert keep_top_magnitude(delta, 4 / 9).tolist() == [0, -3, 2, -2, 2, 0, 0, 0, 0]


def test_dare_mask_depends_on_position_not_on_the_callers_chunking(monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK", 1000)
    delta = _rand(5000, seed=4)
    whole = drop_random(delta, 0.4, seed=9)
    halves = torch.cat([drop_random(delta[:2000], 0.4, seed=9), delta[2000:] * 0])
    assert torch.equal(whole[:2000], halves[:2000])  # the first two chunks alone: the same mask
    assert abs(float((whole != 0).float().mean()) - 0.4) < 0.03


@pytest.mark.parametrize("method", ["ties", "slerp", "linear"])
def test_output_comes_in_the_saved_dtype_rounded_like_a_cast(method):
    thetas = [_rand(40, 30, seed=s, dtype=torch.bfloat16) for s in range(3 if method != "slerp" else 2)]
    p32 = {
        "ties": _params("ties", [1.0, 0.5], [0.5, 0.5]),
        "slerp": TensorParams(base=0, params={"t": 0.4}, model_params=[{}, {}]),
        "linear": TensorParams(base=None, params={"normalize": True}, model_params=[{"weight": 1.0}] * 3),
    }[method]
    p16 = TensorParams(p32.base, p32.params, p32.model_params, p32.tensor, out_dtype=torch.bfloat16)
    fp32, bf16 = METHODS[method].apply(thetas, p32), METHODS[method].apply(thetas, p16)
    assert bf16.dtype == torch.bfloat16
    assert torch.equal(bf16, fp32.bfloat16())


def test_reader_returns_the_stored_tensors_and_names_a_truncated_file(tmp_path):
    from safetensors.torch import save_file

    from branchmerge.errors import BranchmergeError
    from branchmerge.merge.checkpoint import Checkpoint, TensorReader

    tensors = {
        "a": _rand(5, 3, seed=1, dtype=torch.bfloat16),
        "b": _rand(7, seed=2),
        "empty": torch.zeros(0, 4),
    }
    (tmp_path / "config.json").write_text("{}")
    save_file(tensors, str(tmp_path / "model.safetensors"))
    ckpt = Checkpoint.open(tmp_path)
    with TensorReader() as reader:
        for name, want in tensors.items():
            got = reader.read(ckpt, name)
            assert got.dtype == want.dtype and torch.equal(got, want)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-10])  # cut into the last tensor's bytes
    with TensorReader() as reader, pytest.raises(BranchmergeError, match="model.safetensors.*truncated"):
        for name in tensors:
            reader.read(ckpt, name)


# ---- streaming the largest tensors from disk to disk ------------------------------------------------------


def _state(folder):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _configs(a, b, c):
    models = [
        {"model": str(m), "parameters": {"weight": w, "density": d}}
        for m, w, d in ((b, 0.6, 0.4), (c, 0.5, 0.7))
    ]
    tv = {"base_model": str(a), "models": models, "dtype": "bfloat16"}
    return {
        "linear": {
            "merge_method": "linear",
            "models": [{"model": str(m), "parameters": {"weight": 1}} for m in (a, b)],
        },
        "slerp": {
            "merge_method": "slerp",
            "base_model": str(a),
            "models": [{"model": str(b)}],
            "parameters": {"t": [{"filter": "embed_tokens", "value": 0}, {"value": 0.3}]},
        },
        "slerp-embed": {
            "merge_method": "slerp",
            "base_model": str(a),
            "models": [{"model": str(b)}],
            "parameters": {"t": 0.7},
        },
        "ties": {"merge_method": "ties", **tv},
        "ties-rescale": {"merge_method": "ties", **tv, "parameters": {"rescale": True}},
        "dare_ties": {"merge_method": "dare_ties", **tv, "parameters": {"seed": 5}},
        "task_arithmetic": {"merge_method": "task_arithmetic", **tv},
        "model_stock": {
            "merge_method": "model_stock",
            "base_model": str(a),
            "models": [{"model": str(b)}, {"model": str(c)}],
        },
    }


@pytest.mark.parametrize(
    "method",
    ["linear", "slerp", "slerp-embed", "ties", "ties-rescale", "dare_ties", "task_arithmetic", "model_stock"],
)
def test_streamed_tensors_equal_in_memory_ones_bit_for_bit(tmp_path, monkeypatch, make_checkpoint, method):
    from branchmerge.merge import engine, run_merge

    a, b, c = (make_checkpoint(seed=s) for s in (11, 12, 13))
    cfg = _configs(a, b, c)[method]
    monkeypatch.setattr(chunks, "CHUNK", 1000)  # the same chunk grid in both runs (DARE masks follow it)
    run_merge(cfg, tmp_path / "memory", show_progress=False)
    streamed = []
    real_stream = engine._stream
    monkeypatch.setattr(engine, "STREAM_MIN_ELEMENTS", 4000)  # the embedding and the MLP matrices stream
    monkeypatch.setattr(
        engine,
        "_stream",
        lambda plan, job, lazy, w: (streamed.append(job.name), real_stream(plan, job, lazy, w)),
    )
    run_merge(cfg, tmp_path / "disk", show_progress=False)
    want, got = _state(tmp_path / "memory"), _state(tmp_path / "disk")
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    if method == "model_stock":  # not a streaming method: every tensor is merged in memory
        assert streamed == []
    else:
        assert "model.embed_tokens.weight" in streamed and len(streamed) >= 3


def test_lazy_tensor_reads_ranges_and_scattered_positions(tmp_path):
    from safetensors.torch import save_file

    from branchmerge.merge.checkpoint import Checkpoint, TensorReader

    x = _rand(3000, 7, seed=9, dtype=torch.bfloat16)
    (tmp_path / "config.json").write_text("{}")
    save_file({"x": x}, str(tmp_path / "model.safetensors"))
    with TensorReader() as reader:
        lazy = reader.lazy(Checkpoint.open(tmp_path), "x", torch.float32, torch.device("cpu"))
        flat_x = x.reshape(-1).float()
        assert lazy.shape == x.shape and lazy.numel() == x.numel()
        assert torch.equal(lazy.reshape(-1)[100:5000], flat_x[100:5000])
        positions = torch.randint(x.numel(), (500,), generator=torch.Generator().manual_seed(0))
        assert torch.equal(lazy[positions], flat_x[positions])


def test_gram_is_the_same_on_any_number_of_threads() -> None:
    # A threaded fp32 dot sums in a thread-dependent order (on this 1M-element input 1 and 2 threads differ in the
    # last bits), which SLERP's coefficients would carry into the merged bytes.
    from branchmerge import runtime
    from branchmerge.merge.methods.chunks import gram

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1 << 20, generator=g), torch.randn(1 << 20, generator=g)
    with runtime.using("merge", 1):
        one = gram(a, b)
    with runtime.using("merge", 2):
        two = gram(a, b)
        assert torch.get_num_threads() == 2  # gram restores the caller's setting
    assert one == two


@pytest.mark.parametrize(("method", "p"), CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
@pytest.mark.parametrize("sink", [False, True], ids=["returned", "sunk"])
def test_blocks_inside_chunks_give_the_bits_of_whole_chunks(monkeypatch, method, p, sink):
    # elementwise work goes block by block inside each chunk (`chunks.BLOCK`): 37-element blocks, which never
    # line up with the 500-element chunks, must give the bits of one block per chunk, returned or streamed
    n_inputs = 2 if method == "slerp" else 3
    thetas = [_rand(64, 33, seed=s, dtype=torch.bfloat16) for s in range(n_inputs)]
    monkeypatch.setattr(chunks, "CHUNK", 500)
    monkeypatch.setattr(task_vector, "SAMPLE", 256)

    def run() -> torch.Tensor:
        if not sink:
            return METHODS[method].apply(thetas, p)
        pieces: list[torch.Tensor] = []
        assert METHODS[method].apply(thetas, dataclasses.replace(p, sink=pieces.append)) is None
        return torch.cat(pieces).view(64, 33)  # each piece its own tensor, not a reused buffer

    monkeypatch.setattr(chunks, "BLOCK", 1 << 20)
    whole = run()
    monkeypatch.setattr(chunks, "BLOCK", 37)
    monkeypatch.setattr("branchmerge.merge.methods.slerp.BLOCK", 37)
    assert torch.equal(whole, run())


def test_a_result_does_not_share_the_scratch_buffers_of_the_next_merge():
    from branchmerge.merge.methods.slerp import slerp

    a, b, c, d = (_rand(300, seed=s, dtype=torch.bfloat16) for s in range(4))
    first = slerp(0.3, a, b)
    kept = first.clone()
    slerp(0.6, c, d)
    assert torch.equal(first, kept)
