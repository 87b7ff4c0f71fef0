"""Sequential merges ((A & B) & C) from one multi-document YAML, and the streaming shard writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from branchmerge.errors import BranchmergeError
from branchmerge.merge import load_merge_config, run_merge
from branchmerge.merge.config import load_merge_configs
from branchmerge.merge.writer import ShardWriter


@pytest.fixture(scope="module")
def abc(make_checkpoint) -> tuple[Path, Path, Path]:
    return make_checkpoint(seed=11), make_checkpoint(seed=12), make_checkpoint(seed=13)


def sd(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def fusion(base: str, other: str, name: str | None = None, lam: float = 0.5) -> dict:
    cfg = {
        "merge_method": "arcee_fusion",
        "base_model": base,
        "models": [{"model": base}, {"model": other}],
        "parameters": {"lambda": lam},
    }
    return {"name": name, **cfg} if name else cfg


def write_docs(path: Path, docs: list[dict]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def test_sequence_equals_the_steps_run_by_hand_and_names_the_order(tmp_path, abc):
    a, b, c = map(str, abc)
    cfg = write_docs(tmp_path / "seq.yaml", [fusion(a, b, "ab"), fusion("ab", c)])
    result = run_merge(cfg, tmp_path / "final", show_progress=False)

    run_merge(fusion(a, b), tmp_path / "ab", show_progress=False)
    run_merge(fusion(str(tmp_path / "ab"), c), tmp_path / "by-hand", show_progress=False)
    got, want = sd(tmp_path / "final"), sd(tmp_path / "by-hand")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)

    names = [Path(x).name for x in (a, b, c)]
    assert result.order == f"(({names[0]} & {names[1]}) & {names[2]})"
    card = (tmp_path / "final" / "README.md").read_text()
    assert result.order in card
    for x in (a, b, c):  # every leaf input's weights are hashed in the final card
        assert f"{x}/model.safetensors" in card
    steps = load_merge_configs(tmp_path / "final" / "merge_config.yaml")
    assert [s.name for s in steps] == ["ab", None]
    assert not list(tmp_path.glob(".final.steps-*"))  # the temporary step folder is gone


def test_intermediate_dir_keeps_steps_and_a_rerun_reuses_them(tmp_path, abc):
    a, b, c = map(str, abc)
    cfg = write_docs(tmp_path / "seq.yaml", [fusion(a, b, "ab"), fusion("ab", c)])
    run_merge(cfg, tmp_path / "final", show_progress=False, intermediate_dir=tmp_path / "steps")
    step_file = tmp_path / "steps" / "ab" / "model.safetensors"
    before = step_file.stat().st_mtime_ns
    run_merge(cfg, tmp_path / "final", show_progress=False, intermediate_dir=tmp_path / "steps")
    assert step_file.stat().st_mtime_ns == before
    # a changed step is merged again
    write_docs(cfg, [fusion(a, b, "ab", lam=1.0), fusion("ab", c)])
    run_merge(cfg, tmp_path / "final", show_progress=False, intermediate_dir=tmp_path / "steps")
    assert step_file.stat().st_mtime_ns != before


def test_intermediate_step_is_merged_again_when_an_input_changed(tmp_path, abc, make_checkpoint):
    import shutil

    a, b, c = abc
    a2 = tmp_path / "a"
    shutil.copytree(a, a2)
    cfg = write_docs(tmp_path / "seq.yaml", [fusion(str(a2), str(b), "ab"), fusion("ab", str(c))])
    run_merge(cfg, tmp_path / "final", show_progress=False, intermediate_dir=tmp_path / "steps")
    step_file = tmp_path / "steps" / "ab" / "model.safetensors"
    first = step_file.read_bytes()
    shutil.copy(
        make_checkpoint(seed=21) / "model.safetensors", a2 / "model.safetensors"
    )  # retrained in place
    run_merge(cfg, tmp_path / "final", show_progress=False, intermediate_dir=tmp_path / "steps")
    assert step_file.read_bytes() != first  # the same YAML, but a changed input: not reused


def test_errors_in_a_later_step_stop_the_sequence_before_it_starts(tmp_path, abc):
    a, b, c = map(str, abc)
    bad = fusion("ab", c)
    bad["parameters"] = {"lambada": 1}
    cfg = write_docs(tmp_path / "seq.yaml", [fusion(a, b, "ab"), bad])
    with pytest.raises(BranchmergeError, match=r"document 2\).*parameters.lambada: not a parameter"):
        run_merge(cfg, tmp_path / "final", show_progress=False, intermediate_dir=tmp_path / "steps")
    assert not (tmp_path / "steps" / "ab").exists()
    assert not (tmp_path / "final").exists()


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        (lambda a, b, c: [fusion("ab", c, "abc"), fusion(a, b, "ab")], "'ab' is a step defined later"),
        (lambda a, b, c: [fusion(a, b), fusion(a, c)], "every step but the last needs a name"),
        (
            lambda a, b, c: [fusion(a, b, "x"), fusion(a, c, "x"), fusion("x", b)],
            "'x' is used by an earlier step",
        ),
        (lambda a, b, c: [fusion(a, b, "ab"), fusion("abx", c)], "abx: model folder not found"),
    ],
)
def test_bad_sequences_name_the_document_and_field(tmp_path, abc, docs, message):
    cfg = write_docs(tmp_path / "seq.yaml", docs(*map(str, abc)))
    with pytest.raises(BranchmergeError, match=message) as e:
        run_merge(cfg, tmp_path / "final", show_progress=False)
    assert str(cfg) in str(e.value)
    assert not (tmp_path / "final").exists()


def test_load_merge_config_refuses_a_sequence(tmp_path, abc):
    a, b, c = map(str, abc)
    cfg = write_docs(tmp_path / "seq.yaml", [fusion(a, b, "ab"), fusion("ab", c)])
    with pytest.raises(BranchmergeError, match="has 2 documents"):
        load_merge_config(cfg)


def test_shard_writer_streams_a_valid_safetensors_layout(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(7, 5, generator=g).bfloat16(),
        "b.bias": torch.randn(3, generator=g),
        "c.scalar": torch.tensor(2.5, dtype=torch.float16),
        "d.weight": torch.randn(4, 4, generator=g).bfloat16(),
    }
    specs = [(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    writer = ShardWriter(tmp_path, specs, max_shard_bytes=40)  # [70 B], [12 B + 2 B], [32 B]
    for name, t in tensors.items():
        writer.add(name, t)
    writer.finish()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    ]
    assert index["metadata"]["total_size"] == 70 + 12 + 2 + 32
    for name, t in tensors.items():
        with safe_open(tmp_path / index["weight_map"][name], framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            got = f.get_tensor(name)
        assert got.dtype == t.dtype and torch.equal(got, t)


def test_shard_writer_refuses_out_of_order_or_wrong_shape(tmp_path):
    writer = ShardWriter(tmp_path, [("x", (2,), torch.float32), ("y", (2,), torch.float32)])
    with pytest.raises(RuntimeError, match="expected tensor 'x' next"):
        writer.add("y", torch.zeros(2))
    with pytest.raises(RuntimeError, match="planned"):
        writer.add("x", torch.zeros(3))
    writer.add("x", torch.zeros(2))
    with pytest.raises(RuntimeError, match="without writing 1 tensors"):
        writer.finish()
