"""`merge --explain`: resolved parameters per tensor, and the warnings a config deserves, without merging."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from branchmerge.cli.main import app
from branchmerge.merge.explain import explain_merge


@pytest.fixture(scope="module")
def pair(make_checkpoint) -> tuple[Path, Path]:
    return make_checkpoint(seed=31, num_layers=3), make_checkpoint(seed=32, num_layers=3)


def slerp(a: Path, b: Path, t: object) -> dict:
    return {
        "merge_method": "slerp",
        "base_model": str(a),
        "models": [{"model": str(b)}],
        "parameters": {"t": t},
    }


def test_rows_carry_the_resolved_gradient_per_layer(pair):
    (step,) = explain_merge(slerp(*pair, [0, 0.5, 1]))
    by_tensor = {r.tensor: r for r in step.rows}
    assert by_tensor["model.layers.1.mlp.up_proj.weight"].params == "t=0.5"
    assert by_tensor["model.layers.1.mlp.up_proj.weight"].kind == "mlp.up_proj.weight"
    a, b = (p.name for p in pair)
    assert by_tensor["model.layers.0.self_attn.q_norm.weight"].params == f"copy of {a}"  # t = 0
    assert by_tensor["model.layers.2.self_attn.q_proj.weight"].params == f"copy of {b}"  # t = 1
    assert by_tensor["model.embed_tokens.weight"].params == f"copy of {a}"  # outside the layers: tau = 0
    copies = [w for w in step.warnings if "bit-identical copies" in w]
    assert len(copies) == 2
    assert not (pair[0].parent / "out").exists()


def test_shadowed_and_empty_rules_are_reported(pair):
    t = [
        {"filter": "self_attn", "value": 0.3},
        {"filter": "q_proj", "value": 0.9},  # every q_proj is already taken by self_attn
        {"filter": "vision_tower", "value": 0.1},  # no such tensor
        {"value": 0.5},
        {"filter": "mlp", "value": 0.7},  # after a catch-all
    ]
    (step,) = explain_merge(slerp(*pair, t))
    assert step.warnings == [
        "parameters.t[1] (filter 'q_proj'): never applies; earlier rules already match every tensor it matches",
        "parameters.t[2] (filter 'vision_tower'): matches no tensor of these models",
        "parameters.t[4] (filter 'mlp'): never applies; earlier rules already match every tensor it matches",
    ]


def test_no_op_merge_is_named(pair):
    (step,) = explain_merge(slerp(*pair, 0))
    assert step.warnings == [
        f"no-op merge: every tensor is a copy of {pair[0].name}, so the output is that model"
    ]
    ties = {
        "merge_method": "ties",
        "base_model": str(pair[0]),
        "models": [{"model": str(pair[1]), "parameters": {"weight": 0.0}}],
    }
    (step,) = explain_merge(ties)
    assert step.warnings[0].startswith("no-op merge")


def test_sequence_is_explained_step_by_step(pair, tmp_path):
    import yaml

    a, b = map(str, pair)
    docs = [{"name": "ab", **slerp(*pair, 0.5)}, {**slerp(Path("ab"), pair[1], 0.25)}]
    docs[1]["base_model"] = "ab"
    cfg = tmp_path / "seq.yaml"
    cfg.write_text(yaml.safe_dump_all(docs))
    steps = explain_merge(cfg)
    assert [s.name for s in steps] == ["ab", "final"]
    assert steps[1].inputs == [Path(b).name, "ab"]  # models first, then the base_model when not listed
    assert all(r.params == "t=0.25" for r in steps[1].rows)


def test_cli_explain_prints_the_table_and_warnings(pair, tmp_path):
    import yaml

    cfg = tmp_path / "m.yaml"
    cfg.write_text(yaml.safe_dump(slerp(*pair, [{"value": 0.5}, {"filter": "mlp", "value": 1}])))
    result = CliRunner().invoke(app, ["merge", str(cfg), "--explain"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "all 11 tensors" in result.output and "t=0.5" in result.output
    assert "parameters.t[1] (filter 'mlp'): never applies" in result.output
    missing = CliRunner().invoke(app, ["merge", str(cfg)])
    assert missing.exit_code == 2 and "give the output folder" in missing.output
