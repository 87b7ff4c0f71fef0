"""`engine` where local checkpoints are served or sampled: the recipe field, `generate/eval/process --engine`,
and GRPO's mapping onto TRL's own vLLM options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from branchmerge.cli.main import app
from branchmerge.errors import BranchmergeError
from branchmerge.recipe.schema import load_recipe
from branchmerge.teachers.engines import resolve_engine, vllm_installed
from branchmerge.train.grpo import GRPOSettings, generation_args, train_grpo

runner = CliRunner()
no_vllm = pytest.mark.skipif(vllm_installed(), reason="vLLM is installed here")
RECIPE = {
    "name": "t",
    "problems": {"domains": ["add"], "train_per_domain": 4, "eval_per_domain": 2},
    "teachers": [{"name": "tt", "checkpoint": "tinylab:teacher"}],
    "train": {"student": "tinylab:student"},
}


def _problems(tmp_path: Path) -> Path:
    p = tmp_path / "p.jsonl"
    rows = [{"id": f"p{i}", "domain": "d", "question": f"q{i}", "reference": "r"} for i in range(2)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_recipe_engine_is_validated_by_field(tmp_path: Path) -> None:
    from branchmerge.recipe.resolve import check_recipe

    assert load_recipe(_write(tmp_path, RECIPE)).engine == "auto"
    with pytest.raises(BranchmergeError, match=r"r.yaml: engine: .*'auto', 'builtin' or 'vllm'"):
        load_recipe(_write(tmp_path, {**RECIPE, "engine": "vlm"}))
    if vllm_installed():
        return
    data = {**RECIPE, "engine": "vllm", "grpo": {"start": "mixture", "settings": {"engine": "vllm"}}}
    errors = check_recipe(load_recipe(_write(tmp_path, data)), tmp_path).errors
    assert [e.split(":")[0] for e in errors] == ["engine vllm", "grpo.settings.engine vllm"]
    assert all("pip install 'branchmerge[vllm]'" in e for e in errors)


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_generate_serves_a_checkpoint_as_the_teacher(tiny_model_dir: Path, tmp_path: Path) -> None:
    from branchmerge.records import Trace, read_jsonl

    out = tmp_path / "t.jsonl"
    args = ["generate", str(_problems(tmp_path)), "--out", str(out), "--checkpoint", str(tiny_model_dir)]
    r = runner.invoke(
        app, [*args, "--engine", "builtin", "--teacher", "tiny", "--max-tokens", "4", "--seed", "1"]
    )
    assert r.exit_code == 0, r.output
    traces = read_jsonl(out, Trace)
    assert sorted(t.problem_id for t in traces) == ["p0", "p1"]
    assert {(t.teacher, t.model, t.error) for t in traces} == {("tiny", tiny_model_dir.name, None)}
    assert all(0 < t.completion_tokens <= 4 for t in traces)


@no_vllm
@pytest.mark.parametrize("command", ["generate", "eval", "process"])
def test_engine_vllm_without_vllm_is_one_line(command: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    p, out, ckpt = str(_problems(tmp_path)), str(tmp_path / "out.jsonl"), str(tiny_model_dir)
    args = {
        "generate": ["generate", p, "--out", out, "--checkpoint", ckpt],
        "eval": ["eval", ckpt, "--problems", p, "--out", out],
        "process": ["process", "difficulty", out, "--problems", p, "--out", out, "--judge", ckpt],
    }[command]
    if command == "process":
        (tmp_path / "out.jsonl").write_text("")
    r = runner.invoke(app, [*args, "--engine", "vllm"])
    assert r.exit_code == 2, r.output
    assert "vLLM is not installed" in r.output and "pip install 'branchmerge[vllm]'" in r.output
    assert r.output.count("error:") == 1 and "Traceback" not in r.output


def test_grpo_engine_maps_onto_trl_vllm_options(tmp_path: Path) -> None:
    from trl import GRPOConfig

    s = GRPOSettings(engine="vllm", vllm_gpu_memory_utilization=0.45)
    assert generation_args(s, "builtin") == {"use_vllm": False}
    c = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **generation_args(s, "vllm"))
    assert (c.use_vllm, c.vllm_mode, c.vllm_gpu_memory_utilization) == (True, "colocate", 0.45)
    with pytest.raises(ValueError, match="vllm_gpu_memory_utilization"):
        GRPOSettings(vllm_gpu_memory_utilization=1.5)
    # auto falls back to transformers' sampling where vLLM or the GPU is missing (as on this machine)
    assert GRPOSettings().engine == "auto"
    if resolve_engine("auto") == "builtin":
        assert generation_args(GRPOSettings(), resolve_engine("auto")) == {"use_vllm": False}


@no_vllm
def test_grpo_engine_vllm_fails_before_any_loading(tmp_path: Path) -> None:
    from branchmerge.records import Problem

    problems = [Problem(id="p", domain="d", question="q", reference="r", grader={"type": "exact"})]
    with pytest.raises(BranchmergeError, match=r"^grpo: engine vllm: vLLM is not installed"):
        train_grpo(problems, tmp_path / "no-model", tmp_path / "out", GRPOSettings(engine="vllm"))
    assert not (tmp_path / "out").exists()


def test_train_grpo_engine_option(tiny_model_dir: Path, tmp_path: Path) -> None:
    args = [str(_problems(tmp_path)), "--base", str(tiny_model_dir), "--out", str(tmp_path / "o")]
    r = runner.invoke(app, ["train", "sft", *args, "--engine", "vllm"])
    assert r.exit_code == 2 and "No such option: --engine" in r.output
    r = runner.invoke(app, ["train", "grpo", *args, "--engine", "vlm"])
    assert r.exit_code == 2 and "--engine 'vlm'" in r.output and "vllm" in r.output
    if not vllm_installed():
        r = runner.invoke(app, ["train", "grpo", *args, "--engine", "vllm"])
        assert r.exit_code == 2 and "grpo: engine vllm: vLLM is not installed" in r.output
    assert not (tmp_path / "o").exists()
