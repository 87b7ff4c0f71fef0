"""End to end: `branchmerge demo --quick` on the shipped tiny models, then the stage cache at work."""

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from branchmerge.cli.main import app
from branchmerge.cli.recipes import QUICK_OVERRIDES, demo_recipe_path
from branchmerge.evaluate.results import read_results
from branchmerge.recipe import load_recipe, run_recipe

MODELS = [
    "student",
    "expert-add",
    "expert-sort",
    "expert-compare",
    "mixture",
    "slerp-add-sort",
    "ties",
    "average",
    "regmean",
    "fusion-add-sort",
    "fusion-all",
]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    result = CliRunner().invoke(app, ["demo", "--quick", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_demo_quick_runs_every_stage_and_reports(demo_out):
    out, output = demo_out
    report = (out / "report.md").read_text()
    for m in MODELS:
        assert f"| {m} |" in report
        assert m in output  # the results table printed at the end
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Merge synergy" in report and (out / "report.html").exists()  # each recipe merge vs its parents
    stages = {
        p.name.rsplit("-", 1)[0]: json.loads((p / "stage.json").read_text())
        for p in (out / "stages").iterdir()
    }
    gen = stages["generate.tiny-teacher"]["summary"]
    # 3 domains x 32 problems x 2 temperatures x n=1, all answered over HTTP by the served teacher
    assert gen["traces"] == 3 * 32 * 2 and gen["errors"] == 0
    process = stages["process"]["summary"]
    assert process["traces"] == gen["traces"] and process["kept"] > 0.8 * gen["traces"]
    assert process["kept"] + sum(process["steps"]["verify"]["removed"].values()) == gen["traces"]
    for d in ["add", "sort", "compare"]:
        assert (
            stages[f"train.expert-{d}"]["summary"]["final_loss"]
            < stages[f"train.expert-{d}"]["summary"]["first_loss"]
        )
    # the machine-readable claim: every model with its kind, parents and tokens trained, per-domain intervals
    results = read_results(out / "results.json")
    assert results.baseline == "student" and set(results.models) == set(MODELS)
    assert results.models["expert-add"].kind == "expert" and results.models["expert-add"].domain == "add"
    assert results.models["regmean"].kind == "merge" and "expert-sort" in results.models["regmean"].parents
    assert results.models["mixture"].train_tokens > results.models["expert-add"].train_tokens > 0
    assert "## Branch-Merge claim" in report
    assert stages["mergeability"]["summary"]["verdict"] in ("likely", "risky", "unlikely")


def test_rerun_reuses_everything_and_a_merge_edit_reruns_only_that_merge(demo_out):
    out, _ = demo_out
    quiet = Console(quiet=True)
    again = run_recipe(
        load_recipe(demo_recipe_path(), QUICK_OVERRIDES), out, show_progress=False, console=quiet
    )
    assert all(o.reused for o in again.stages)
    edited = load_recipe(demo_recipe_path(), [*QUICK_OVERRIDES, "merges.ties.parameters.normalize=false"])
    r = run_recipe(edited, out, show_progress=False, console=quiet)
    assert sorted(o.name for o in r.stages if not o.reused) == ["eval.ties", "merge.ties"]


def _accuracies(out):
    acc = {}
    for p in (out / "stages").glob("eval.*"):
        s = json.loads((p / "stage.json").read_text())["summary"]
        acc[p.name.rsplit("-", 1)[0].removeprefix("eval.")] = s["accuracy"]
    return acc


@pytest.mark.slow
def test_full_demo_experts_beat_the_student_base_on_their_domain(tmp_path):
    """The full demo's first target (about 15 minutes on 2 busy cores; `pytest -m slow`). The quick demo trains
    too little for this to hold, and says so in its report."""
    out = tmp_path / "full"
    result = CliRunner().invoke(app, ["demo", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    acc = _accuracies(out)
    for d in ["add", "sort", "compare"]:
        assert acc[f"expert-{d}"][d] > acc["student"][d], (d, acc[f"expert-{d}"][d], acc["student"][d])
