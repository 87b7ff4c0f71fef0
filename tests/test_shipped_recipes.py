"""The recipes under recipes/: each passes `run --dry-run` offline, and a tiny version of each (the same stages,
merges, curriculum and eval set layouts; tiny models, tinylab problems, the demo's local teacher) runs end to
end on a CPU."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from branchmerge.recipe import load_recipe, run_recipe
from branchmerge.recipe.plan import plan_recipe
from branchmerge.recipe.summaries import (
    MergeabilitySummary,
    ProcessSummary,
    RewardModelsSummary,
    TrainSummary,
)
from branchmerge.records import EvalSample, read_jsonl
from branchmerge.tinylab.domains import generate_problems
from fakes import fake_openai, ok

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SHIPPED = ["two-teacher-slerp", "branch-merge-arcee-fusion", "adaptive-thinking"]


def test_the_three_recipes_are_shipped():
    assert sorted(p.stem for p in RECIPES.glob("*.yaml")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_passes_dry_run_offline(name, tmp_path):
    path = RECIPES / f"{name}.yaml"
    plan = plan_recipe(load_recipe(path), tmp_path / "runs", path.parent, probe=False)
    assert plan.errors == []
    # every training stage gets a GPU memory figure from the shipped config.json, before any download
    assert plan.training and all(t.memory_gib is not None and t.memory_gib > 1 for t in plan.training)
    assert [s.name for s in plan.stages][:1] == ["problems"]
    assert any("Hub model" in t for t in plan.todo)  # the student is downloaded by the run, not the plan


def test_dry_run_reports_the_published_slerp_rule_that_never_applies(tmp_path):
    path = RECIPES / "two-teacher-slerp.yaml"
    plan = plan_recipe(load_recipe(path), tmp_path, path.parent, probe=False)
    assert any(
        w.startswith("merges.slerp-published: parameters.t[3] (filter 'self'): never applies")
        for w in plan.warnings
    )
    assert not any("slerp-intended" in w and "never applies" in w for w in plan.warnings)
    # 500 mdr training questions, each sent once to each teacher; the judge grades 2 judged domains x 10 items
    # x 11 samples x 5 models in evaluation
    loads = {(t.who, t.role): t for t in plan.teachers}
    assert loads["kimi", "generate"].requests == loads["qwen", "generate"].requests == 500
    assert loads["kimi", "generate"].completion_tokens == 500 * 16384
    assert loads["kimi", "generate"].expected_completion == 500 * 4000
    assert loads["qwen", "judge: eval"].requests == 20 * 11 * 5
    qlora = [t for t in plan.training if t.method == "qlora"]
    assert len(qlora) == 2 and 10 < qlora[0].memory_gib < 80  # a 4B QLoRA at 8k tokens: one 80 GB GPU


def test_dry_run_prices_requests_and_probes_endpoints(tmp_path):
    """Prices given in the recipe give the cost; a live endpoint is asked for /v1/models, a dead one is reported
    without failing the plan."""
    from branchmerge.teachers.serve import running_server
    from branchmerge.tinylab.weights import teacher_dir

    data = yaml.safe_load((RECIPES / "two-teacher-slerp.yaml").read_text())
    with running_server(teacher_dir()) as url:
        data["teachers"][0].update(
            base_url=url, model=teacher_dir().name, price_prompt=1.0, price_completion=2.0
        )
        data["teachers"][1].update(base_url="http://127.0.0.1:9/v1")
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(data))
        (tmp_path / "models").symlink_to(RECIPES / "models")
        plan = plan_recipe(load_recipe(path), tmp_path / "runs", tmp_path)
    status = {t: s for t, _, s in plan.endpoints}
    assert status["kimi"] == f"ok, serves {teacher_dir().name}"
    assert status["qwen"].startswith("unreachable")
    assert any(line.startswith("teacher qwen: http://127.0.0.1:9/v1 unreachable") for line in plan.todo)
    kimi = next(t for t in plan.teachers if t.who == "kimi")
    assert kimi.cost == pytest.approx((kimi.prompt_tokens * 1.0 + kimi.completion_tokens * 2.0) / 1e6)
    assert kimi.expected_cost == pytest.approx((kimi.prompt_tokens + 2 * kimi.expected_completion) / 1e6)
    assert plan.errors == []


def test_dry_run_cli_exits_zero_and_prints_the_plan(tmp_path):
    from typer.testing import CliRunner

    from branchmerge.cli.main import app

    r = CliRunner().invoke(
        app,
        [
            "run",
            str(RECIPES / "branch-merge-arcee-fusion.yaml"),
            "--out",
            str(tmp_path),
            "--dry-run",
            "--no-probe",
        ],
        env={"COLUMNS": "200"},
    )
    assert r.exit_code == 0, r.output
    assert "data/tinyr1/math.jsonl not found" in r.output  # a missing input is listed, not fatal
    assert "merge.math-code-science" in r.output and "eval.tinyr1.aime2024" in r.output


def test_dry_run_fails_on_a_recipe_error(tmp_path):
    from typer.testing import CliRunner

    from branchmerge.cli.main import app

    data = yaml.safe_load((RECIPES / "branch-merge-arcee-fusion.yaml").read_text())
    data["merges"]["tinyr1"]["models"][1]["model"] = "expert-coding"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    r = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path), "--dry-run", "--no-probe"])
    assert r.exit_code == 2  # bad input, like every command
    assert "merges.tinyr1.models[1].model: 'expert-coding' is not a model of this recipe" in r.output


# ---- tiny versions: the shipped stages on tiny models ------------------------------------------------------


def _tiny(name: str, tmp: Path, **eval_files: Path) -> dict[str, Any]:
    """The shipped recipe with tiny models and counts; stages, merges, curriculum and set names untouched."""
    data = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    data["teachers"] = [
        {"name": t["name"], "checkpoint": "tinylab:teacher", "max_concurrency": 32} for t in data["teachers"]
    ]
    domains = data["problems"].get("domains") or ["add", "sort"]
    tiny_domains = ["add", "sort", "compare"][: len(domains)]
    data["problems"] = {
        "source": "tinylab",
        "domains": tiny_domains,
        "train_per_domain": 24,
        "eval_per_domain": 4,
        "relabel": dict(zip(tiny_domains, domains, strict=True)) if data["problems"].get("domains") else {},
    }
    data["generate"].update(n=1, max_tokens=120)
    data["build_sft"] = {"max_length": 512}
    data["train"].update(student="tinylab:student", student_config=None)
    data["train"]["settings"] = {"method": "full", "max_steps": 6, "batch_size": 8, "learning_rate": 0.001}
    data["mergeability"] = {"examples": 8}  # on for tiny models, where it fits anywhere
    e = data["eval"]
    e.update(max_tokens=24, temperature=0.6)
    for s in e["sets"]:
        s["n"] = 2
        if "path" in s:
            s["path"] = str(eval_files[s["name"]])
    return data


def _run(data: dict[str, Any], tmp: Path):
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run_recipe(load_recipe(path), tmp / "out", base_dir=tmp, show_progress=False)
    return result, read_jsonl_all(tmp / "out")


def read_jsonl_all(out: Path) -> list[EvalSample]:
    return [
        s for f in sorted((out / "stages").glob("eval.*/samples.jsonl")) for s in read_jsonl(f, EvalSample)
    ]


def _aime(path: Path) -> Path:
    rows = [
        {"id": p.id, "problem": p.question, "answer": p.reference}
        for p in generate_problems("add", 3, 7, (1,))
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _math500(path: Path) -> Path:
    rows = [
        {"problem": p.question, "solution": f"\\boxed{{{p.reference}}}", "answer": p.reference,
         "subject": "Arithmetic", "level": p.level, "unique_id": p.id}
        for p in generate_problems("add", 3, 8, (1, 2))
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _gpqa(path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
        )
        for p in generate_problems("compare", 3, 9, (1,)):
            w.writerow([p.question, p.reference, "1", "2", "3"])
    return path


def _livecodebench(path: Path) -> Path:
    cases = json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}])
    rows = [
        {"question_id": f"q{i}", "question_content": "Read two integers; print their sum.",
         "public_test_cases": cases, "private_test_cases": "[]"}
        for i in range(2)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tiny_two_teacher_slerp_runs_end_to_end(tmp_path):
    data = _tiny("two-teacher-slerp", tmp_path)
    # mdr: 10 domains x 2 levels, one sample each (the other tiny recipes check n = 2 per item; decoding these
    # long, padded prompts is most of this test's time)
    data["eval"]["sets"][0].update(levels=[1, 2], n=1)
    result, samples = _run(data, tmp_path)
    names = [o.name for o in result.stages]
    assert names[:4] == ["problems", "generate.kimi", "generate.qwen", "process"]
    assert {"train.expert-kimi", "train.expert-qwen", "merge.slerp-published", "merge.slerp-intended"} <= set(
        names
    )
    models = {s.model for s in samples}
    assert models == {"student", "expert-kimi", "expert-qwen", "slerp-published", "slerp-intended"}
    assert len(samples) == 5 * 20 * 1 and {s.benchmark for s in samples} == {"mdr"}
    # the published config copies expert-qwen (t = 1 everywhere); the intended one is a real interpolation
    out = tmp_path / "out" / "stages"
    pub = next(out.glob("merge.slerp-published-*")) / "model" / "model.safetensors"
    qwen = next(out.glob("train.expert-qwen-*")) / "model" / "model.safetensors"
    intended = next(out.glob("merge.slerp-intended-*")) / "model" / "model.safetensors"
    assert _tensors_equal(pub, qwen) and not _tensors_equal(intended, qwen)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "slerp-intended" in report and (tmp_path / "out" / "report.html").exists()


def _tensors_equal(a: Path, b: Path) -> bool:
    """`a` (a bf16 merge) holds exactly `b`'s tensors cast to bf16."""
    from safetensors.torch import load_file

    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(x[k].equal(y[k].to(x[k].dtype)) for k in x)


def test_tiny_branch_merge_arcee_fusion_runs_end_to_end(tmp_path):
    files = {
        "aime2024": _aime(tmp_path / "aime.jsonl"),
        "gpqa-diamond": _gpqa(tmp_path / "gpqa.csv"),
        "livecodebench": _livecodebench(tmp_path / "lcb.jsonl"),
    }
    data = _tiny("branch-merge-arcee-fusion", tmp_path, **files)
    result, samples = _run(data, tmp_path)
    names = [o.name for o in result.stages]
    for n in ("train.expert-math", "train.expert-code", "train.expert-science", "train.mixture"):
        assert n in names
    assert names.index("mergeability") == names.index("train.mixture") + 1
    assert isinstance(result.stages[names.index("mergeability")].summary, MergeabilitySummary)
    assert [n for n in names if n.startswith("merge.")] == [
        "merge.math-science", "merge.tinyr1", "merge.math-code", "merge.math-code-science"
    ]  # fmt: skip
    # the mixture trains on the experts' summed budget
    steps = {o.name: o.summary.steps for o in result.stages if isinstance(o.summary, TrainSummary)}
    assert steps["train.mixture"] == 3 * steps["train.expert-math"] == 18
    per_set = {(s.domain, s.model) for s in samples}
    assert {d for d, _ in per_set} == {"aime2024", "gpqa-diamond", "livecodebench"}
    assert len({m for _, m in per_set}) == 7
    counts = {d: sum(s.domain == d for s in samples) for d in ("aime2024", "gpqa-diamond", "livecodebench")}
    assert counts == {"aime2024": 7 * 3 * 2, "gpqa-diamond": 7 * 3 * 2, "livecodebench": 7 * 2 * 2}
    # after the run, the plan sees the cache and counts the SFT set it built instead of bounds
    plan = plan_recipe(load_recipe(tmp_path / "recipe.yaml"), tmp_path / "out", tmp_path, probe=False)
    cached = {st.name: st.cached for st in plan.stages}
    assert all(
        cached[n] for n in ("problems", "generate.deepseek-r1", "process", "build-sft", "merge.tinyr1")
    )
    built = {
        o.name.removeprefix("train."): o.summary.examples
        for o in result.stages
        if isinstance(o.summary, TrainSummary)
    }
    assert {t.name: t.examples for t in plan.training} == {k: str(v) for k, v in built.items()}


def _scripted_judge(call: int, body: dict[str, Any]):
    """A judge that answers every prompt with a score and a difficulty drawn from the prompt's hash."""
    h = int(hashlib.sha256(json.dumps(body["messages"]).encode()).hexdigest(), 16)
    text = f"<score>{h % 10}</score> <difficulty>{['medium', 'hard'][h % 2]}</difficulty>"
    return ok(body, {"role": "assistant", "content": text})


def test_tiny_adaptive_thinking_runs_end_to_end(tmp_path):
    from branchmerge.teachers.serve import running_app

    files = {
        "math500": _math500(tmp_path / "math500.jsonl"),
        "aime2024": _aime(tmp_path / "aime.jsonl"),
        "gpqa-diamond": _gpqa(tmp_path / "gpqa.csv"),
    }
    data = _tiny("adaptive-thinking", tmp_path, **files)
    app, calls = fake_openai(_scripted_judge)
    with running_app(app) as root:
        # the tiny teacher cannot write <score>: a scripted local judge scores difficulty and RV/CD
        data["teachers"].append({"name": "judge", "base_url": f"{root}/v1", "model": "j", "generates": False})
        data["process"]["judge"] = "judge"
        data["process"]["sample"]["weights"] = {}
        data["reward_models"]["settings"] = {"max_steps": 3, "batch_size": 4, "max_length": 256}
        data["grpo"].update(problems=4)
        data["grpo"]["settings"] = {
            "max_steps": 1,
            "batch_size": 4,
            "num_generations": 2,
            "max_completion_length": 16,
        }
        data["eval"]["max_k"] = 2
        result, samples = _run(data, tmp_path)
    names = [o.name for o in result.stages]
    assert names[:5] == ["problems", "generate.deepseek-r1", "generate.qwq-32b", "process", "build-sft"]
    assert names[5:8] == ["train.mixture", "reward-models", "grpo.grpo"]
    summaries = {o.name: o.summary for o in result.stages}
    process, mixture, rewards = summaries["process"], summaries["train.mixture"], summaries["reward-models"]
    assert isinstance(process, ProcessSummary) and isinstance(mixture, TrainSummary)
    assert list(process.steps) == ["verify", "dedup", "difficulty", "rv_cd", "sample"]
    assert [s.name for s in mixture.stages or []] == ["medium", "hard"]
    assert isinstance(rewards, RewardModelsSummary)
    assert set(rewards.root) == {"rv", "cd"} and rewards.root["rv"].train > 0
    assert {s.model for s in samples} == {"student", "mixture", "grpo"}
    assert {s.domain for s in samples} == {"math500", "aime2024", "gpqa-diamond"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "pass@k" in report and (tmp_path / "out" / "pass_at_k.png").exists()
    assert calls  # the judge was asked
