"""The recipe's `mergeability` stage: after the domain experts train and before any merge, the verdict of
merge.mergeability on them, with each expert's loss on the other domains' SFT examples (never trained on)."""

from __future__ import annotations

import io
from pathlib import Path

import yaml
from rich.console import Console
from safetensors.torch import load_file

from branchmerge.merge.forgetting import OFFDOMAIN_FILE, domain_losses
from branchmerge.recipe import load_recipe, run_recipe
from branchmerge.recipe.graph import build_stages
from branchmerge.recipe.plan import plan_recipe
from branchmerge.recipe.stage_api import Env
from branchmerge.recipe.summaries import MergeabilitySummary
from branchmerge.records import OffDomainLoss, SFTExample, read_jsonl
from branchmerge.tinylab.weights import student_dir


def _recipe(tmp: Path, domains: list[str], experts: str = "domain", **check: object) -> Path:
    data = {
        "name": "mergeability",
        "problems": {"source": "tinylab", "domains": domains, "train_per_domain": 16, "eval_per_domain": 2},
        "teachers": [{"name": "tt", "checkpoint": "tinylab:teacher", "max_concurrency": 32}],
        "generate": {"n": 1, "max_tokens": 120},
        "build_sft": {"max_length": 512},
        "train": {
            "student": "tinylab:student",
            "experts": experts,
            "mixture": True,
            "settings": {"method": "full", "max_steps": 3, "batch_size": 8, "learning_rate": 0.001},
        },
        "eval": {"models": ["student"], "max_tokens": 8},
        "mergeability": check,
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _rel_delta(expert: Path, base: Path) -> float:
    """||expert - base|| / ||base|| over every tensor, by hand."""
    e, b = load_file(expert / "model.safetensors"), load_file(base / "model.safetensors")
    diff = sum(float((e[k].double() - b[k].double()).pow(2).sum()) for k in b)
    return (diff / sum(float(b[k].double().pow(2).sum()) for k in b)) ** 0.5


def test_mergeability_runs_after_the_experts_and_before_any_merge(tmp_path):
    recipe = load_recipe(_recipe(tmp_path, ["add", "sort"], examples=5))
    names = [s.name for s in build_stages(recipe, Env(tmp_path, {}))]
    assert names[names.index("train.mixture") + 1] == "mergeability"
    plan = plan_recipe(recipe, tmp_path / "out", tmp_path, probe=False)
    assert {s.name: s.note for s in plan.stages}["mergeability"] == "not cached"

    console = Console(file=io.StringIO(), width=300)
    result = run_recipe(recipe, tmp_path / "out", base_dir=tmp_path, show_progress=False, console=console)
    ran = {o.name: o for o in result.stages}
    o = ran["mergeability"]
    s = o.summary
    assert isinstance(s, MergeabilitySummary)
    line = next(x for x in console.file.getvalue().splitlines() if " mergeability " in x)
    assert line.strip().startswith("ran") and line.endswith(s.describe())

    # the records are in the stage's own folder; the trained experts' folders are left as they were published
    sft = read_jsonl(ran["build-sft"].path / "sft.jsonl", SFTExample)
    firsts = {d: [e for e in sft if e.domain == d][:5] for d in ("add", "sort")}
    assert s.examples == {"add": 5, "sort": 5}
    student = student_dir()
    base = domain_losses(student, firsts)
    assert s.offdomain_loss["student"] == {d: round(x, 4) for d, x in base.items()}
    for expert, domain, other in (("expert-add", "add", "sort"), ("expert-sort", "sort", "add")):
        record = OffDomainLoss.model_validate_json((o.path / expert / OFFDOMAIN_FILE).read_text())
        assert record.domain == domain and record.base == base
        assert not (ran[f"train.{expert}"].path / "model" / OFFDOMAIN_FILE).exists()
        # forgetting: the relative rise of the loss on the one other domain
        rise = (record.expert[other] - base[other]) / base[other]
        assert s.forgetting[expert] == round(rise, 4)
        model = ran[f"train.{expert}"].path / "model"
        assert abs(s.rel_delta[expert] - _rel_delta(model, student)) < 1e-4  # the summary rounds to 4 places
    assert s.verdict in ("likely", "risky", "unlikely") and s.reason

    # the dry run knows its key from the SFT set and shows the verdict
    plan = plan_recipe(recipe, tmp_path / "out", tmp_path, probe=False)
    row = next(r for r in plan.stages if r.name == "mergeability")
    assert row.cached is True and row.note == s.describe()


def test_only_two_or_more_domain_experts_get_the_stage(tmp_path):
    def names(domains: list[str], experts: str, **check: object) -> list[str]:
        recipe = load_recipe(_recipe(tmp_path, domains, experts, **check))
        return [s.name for s in build_stages(recipe, Env(tmp_path, {}))]

    assert "mergeability" in names(["add", "sort", "compare"], "domain")
    assert "mergeability" not in names(["add"], "domain")
    assert "mergeability" not in names(["add", "sort"], "none")
    assert "mergeability" not in names(["add", "sort"], "domain", enabled=False)
