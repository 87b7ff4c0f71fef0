"""Data-aware merges in a recipe: a regmean/fisher model entry whose `calibration` names a domain but no file
reads that domain's examples of the run's own SFT set (build-sft's sft.jsonl), and the merge's key follows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file

from branchmerge.merge import run_merge
from branchmerge.recipe import load_recipe, run_recipe
from branchmerge.recipe.graph import build_stages
from branchmerge.recipe.plan import plan_recipe
from branchmerge.recipe.resolve import check_recipe
from branchmerge.recipe.stage_api import Env
from branchmerge.recipe.summaries import MergeSummary

REGMEAN = {
    "merge_method": "regmean",
    "models": [
        {"model": "expert-add", "calibration": {"domain": "add"}},
        {"model": "expert-sort", "calibration": {"domain": "sort"}},
    ],
    "parameters": {"alpha": 0.9},
    "calibration": {"n": 8, "max_length": 128},
}


def _recipe(tmp: Path, merges: dict[str, Any]) -> Path:
    data = {
        "name": "data-merge",
        "problems": {
            "source": "tinylab",
            "domains": ["add", "sort"],
            "train_per_domain": 16,
            "eval_per_domain": 2,
        },
        "teachers": [{"name": "tt", "checkpoint": "tinylab:teacher", "max_concurrency": 32}],
        "generate": {"n": 1, "max_tokens": 120},
        "build_sft": {"max_length": 512},
        "train": {
            "student": "tinylab:student",
            "mixture": False,
            "settings": {"method": "full", "max_steps": 3, "batch_size": 8, "learning_rate": 0.001},
        },
        "merges": merges,
        "eval": {"models": ["student", "regmean"], "max_tokens": 16},
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_regmean_merge_reads_the_experts_own_training_examples(tmp_path):
    path = _recipe(tmp_path, {"regmean": REGMEAN})
    recipe = load_recipe(path)
    stages = {s.name: s for s in build_stages(recipe, Env(tmp_path, {}))}
    assert stages["merge.regmean"].upstream == ("build-sft", "train.expert-add", "train.expert-sort")

    # before the run: the SFT set does not exist yet, and that is no error
    plan = plan_recipe(recipe, tmp_path / "out", tmp_path, probe=False)
    assert plan.errors == [] and not any("sft.jsonl" in line for line in plan.todo + plan.warnings)

    result = run_recipe(recipe, tmp_path / "out", base_dir=tmp_path, show_progress=False)
    ran = {o.name: o for o in result.stages}
    merged = ran["merge.regmean"]
    assert merged.summary == MergeSummary(method="regmean", tensors=merged.summary.tensors)
    assert not (merged.path / "calibration-cache").exists()  # statistics dropped once the model is written

    # the same merge by hand, with the SFT set's path written out: the same weights
    sft = ran["build-sft"].path / "sft.jsonl"
    by_hand = {**REGMEAN, "models": [dict(m) for m in REGMEAN["models"]]}
    for m, expert in zip(by_hand["models"], ("expert-add", "expert-sort"), strict=True):
        m["model"] = str(ran[f"train.{expert}"].path / "model")
        m["calibration"] = {**m["calibration"], "path": str(sft)}
    run_merge(by_hand, tmp_path / "by-hand" / "model", show_progress=False)
    ours = load_file(merged.path / "model" / "model.safetensors")
    theirs = load_file(tmp_path / "by-hand" / "model" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)
    # the control: each expert on the other's examples gives other weights, so the domains were read
    for m, d in zip(by_hand["models"], ("sort", "add"), strict=True):
        m["calibration"]["domain"] = d
    run_merge(by_hand, tmp_path / "swapped" / "model", show_progress=False)
    swapped = load_file(tmp_path / "swapped" / "model" / "model.safetensors")
    assert any(not ours[k].equal(swapped[k]) for k in ours)

    # after the run: the dry run reads the built set and finds the merge cached
    plan = plan_recipe(recipe, tmp_path / "out", tmp_path, probe=False)
    assert plan.errors == [] and {s.name: s.cached for s in plan.stages}["merge.regmean"] is True


class _Keys:
    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys

    def key(self, stage: str) -> str:
        return self.keys[stage]

    def path(self, stage: str) -> Path:
        return Path("/not-read") / stage  # a merge key names models and the SFT set by their keys


def test_the_merge_key_follows_the_sft_set_only_when_it_reads_it(tmp_path):
    linear = {"merge_method": "linear", "models": [{"model": "expert-add"}, {"model": "expert-sort"}]}
    recipe = load_recipe(_recipe(tmp_path, {"regmean": REGMEAN, "linear": linear}))
    stages = {s.name: s for s in build_stages(recipe, Env(tmp_path, {}))}
    up = {"train.expert-add": "ka", "train.expert-sort": "ks"}

    def key(stage: str, sft: str) -> str:
        return stages[stage].key(_Keys({**up, "build-sft": sft}))

    assert key("merge.regmean", "s1") != key("merge.regmean", "s2")
    assert key("merge.linear", "s1") == key("merge.linear", "s2")
    assert stages["merge.linear"].upstream == ("train.expert-add", "train.expert-sort")


def test_a_calibration_domain_that_is_not_trained_is_named(tmp_path):
    bad = {
        **REGMEAN,
        "models": [REGMEAN["models"][0], {"model": "expert-sort", "calibration": {"domain": "sot"}}],
    }
    checked = check_recipe(load_recipe(_recipe(tmp_path, {"regmean": bad})), tmp_path, download=False)
    assert checked.errors == [
        "merges.regmean.models[1].calibration.domain: 'sot' is not a training domain of this recipe (add, sort); "
        "without a path the examples come from the run's SFT set"
    ]
