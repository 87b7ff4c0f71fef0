"""The recipe's stage list (recipe/graph.py): the keys that name the cache folders, the run order, and what a
stage may read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from branchmerge.cli.recipes import QUICK_OVERRIDES, demo_recipe_path
from branchmerge.recipe import load_recipe
from branchmerge.recipe.cache import StageCache, StageOutcome
from branchmerge.recipe.graph import build_stages
from branchmerge.recipe.resolve import check_recipe, model_names
from branchmerge.recipe.runner import Finished
from branchmerge.recipe.schema import Recipe
from branchmerge.recipe.stage_api import Env
from branchmerge.records import SFTExample, write_jsonl

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

# First computed by the runner as it was before recipe/graph.py existed (commit 3a20f5a, every stage wired by hand
# in run_recipe), whose `branchmerge demo --quick` made exactly those folders, `<name>-<key>`; the graph gave the
# same keys for the same recipe and student. Recomputed once since, when the demo recipe (1,000 problems per
# domain, LoRA experts, 400 eval items, two more merges) and the shipped student's weights (an input of build-sft's
# key and everything after it) changed. A changed key makes every earlier run's cache miss: change these only
# with the recipe or the student.
DEMO_QUICK = """
problems 602ea913f2f3
generate.tiny-teacher 57e083671002
process 42991e33792b
build-sft d56c1afd2fda
train.expert-add 56c0702485c5
train.expert-sort 743f1fa31b08
train.expert-compare 48ee12aefcfd
train.mixture 876c2237fa41
merge.slerp-add-sort a690a24909ff
merge.ties 4c30cde40ff4
merge.average 337f40803351
merge.regmean aa6f1717aae7
merge.fusion-add-sort 72069c29614e
merge.fusion-all 0cf4e6119d1b
eval-set.heldout cd43e02deab2
eval.student c07fa85f286b
eval.expert-add ce8cd954aa8c
eval.expert-sort 6bb15b608981
eval.expert-compare d43991b864e2
eval.mixture ce298a7e2790
eval.slerp-add-sort 6a399ac6dc5d
eval.ties 97f3511af14a
eval.average ab98b4ba7745
eval.regmean b6550c788495
eval.fusion-add-sort 911b04e089a7
eval.fusion-all 5c58d3d92381
"""
DEMO_FULL = """
problems 9041bebec9d5
generate.tiny-teacher cf86a1091345
process 2b947169374c
build-sft 2719df86c872
train.expert-add 9e07ad3a9f5b
train.expert-sort d0a8f30a2f44
train.expert-compare 13328ed89914
train.mixture 22d9c2bdd8f9
merge.slerp-add-sort e94bffbbe733
merge.ties 9aad2baf1128
merge.average e45368cac00c
merge.regmean 01a273a2ee78
merge.fusion-add-sort f339b971870d
merge.fusion-all eb221077e081
eval-set.heldout cdabc4236b9e
eval.student 7e75272b8e14
eval.expert-add 28ab17ded1d2
eval.expert-sort bcf8ca367bf4
eval.expert-compare 551ee6465852
eval.mixture 0543687d6216
eval.slerp-add-sort 64cb9f555d94
eval.ties a50c8b236b32
eval.average edca77be4015
eval.regmean 38cbef2d9e24
eval.fusion-add-sort a80fbbcbfc0c
eval.fusion-all c171942a58a6
"""

# Stages added since, with their keys; each runs after the trainings it reads, and no earlier key moved.
ADDED_QUICK = {"mergeability": "191d7f4628e8"}
ADDED_FULL = {"mergeability": "7197e7e48fae"}


def _with_added(pinned: str, added: dict[str, str]) -> list[tuple[str, str]]:
    rows = _pinned(pinned)
    after = max(i for i, (name, _) in enumerate(rows) if name.startswith("train."))
    return [*rows[: after + 1], *added.items(), *rows[after + 1 :]]


class _Keys:
    """Upstream stages as a run hands them over: their keys, and folders under `root` (only build-sft's is read
    by a key: the branch plans come from its SFT set)."""

    def __init__(self, keys: dict[str, str], root: Path) -> None:
        self.keys, self.root = keys, root

    def key(self, stage: str) -> str:
        return self.keys[stage]

    def path(self, stage: str) -> Path:
        return self.root / stage


def _keys(recipe: Recipe, root: Path) -> list[tuple[str, str]]:
    base = demo_recipe_path().parent
    env = Env(base, check_recipe(recipe, base, download=False).paths)
    keys: dict[str, str] = {}
    for stage in build_stages(recipe, env):
        keys[stage.name] = stage.key(_Keys(keys, root))
    return list(keys.items())


def _pinned(text: str) -> list[tuple[str, str]]:
    return [(line.split()[0], line.split()[1]) for line in text.strip().splitlines()]


def test_demo_stage_keys_are_the_keys_of_the_hand_wired_runner(tmp_path):
    # Domain experts' plans depend only on which domains the SFT set has: one example per domain gives the plans
    # the real run made from its 186 examples.
    (tmp_path / "build-sft").mkdir()
    write_jsonl(
        tmp_path / "build-sft" / "sft.jsonl",
        [
            SFTExample(messages=[], domain=d, num_tokens=1, problem_id=d, teacher="tiny-teacher")
            for d in ("add", "sort", "compare")
        ],
    )
    assert _keys(load_recipe(demo_recipe_path(), QUICK_OVERRIDES), tmp_path) == _with_added(
        DEMO_QUICK, ADDED_QUICK
    )
    assert _keys(load_recipe(demo_recipe_path()), tmp_path) == _with_added(DEMO_FULL, ADDED_FULL)
    # no key names the serving engine (the recipe field), so switching it reuses every finished stage
    builtin = load_recipe(demo_recipe_path(), [*QUICK_OVERRIDES, "engine=builtin"])
    assert builtin.engine == "builtin" and _keys(builtin, tmp_path) == _with_added(DEMO_QUICK, ADDED_QUICK)
    # the control: a setting that decides the output changes the keys from that stage on, and only those
    changed = dict(
        _keys(load_recipe(demo_recipe_path(), [*QUICK_OVERRIDES, "build_sft.max_length=256"]), tmp_path)
    )
    same = [name for name, key in _with_added(DEMO_QUICK, ADDED_QUICK) if changed[name] == key]
    assert same == ["problems", "generate.tiny-teacher", "process", "eval-set.heldout", "eval.student"]


@pytest.mark.parametrize("path", [demo_recipe_path(), *sorted(RECIPES.glob("*.yaml"))], ids=lambda p: p.stem)
def test_every_stage_runs_after_the_stages_it_reads(path):
    recipe = load_recipe(path)
    stages = build_stages(recipe, Env(path.parent, {}))
    names = [s.name for s in stages]
    assert len(set(names)) == len(names) and names[0] == "problems"
    for i, s in enumerate(stages):
        assert set(s.upstream) <= set(names[:i]), s.name
    trained = {n.split(".", 1)[1] for n in names if n.split(".")[0] in ("train", "grpo")}
    assert trained == set(model_names(recipe)) - {"student"}
    assert {n.removeprefix("merge.") for n in names if n.startswith("merge.")} == set(recipe.merges)


def test_a_stage_reads_only_the_stages_it_names(tmp_path):
    recipe = load_recipe(demo_recipe_path(), QUICK_OVERRIDES)
    stages = {s.name: s for s in build_stages(recipe, Env(demo_recipe_path().parent, {}))}
    assert stages["merge.fusion-all"].upstream == ("merge.fusion-add-sort", "train.expert-compare")
    assert stages["eval.ties"].upstream == ("eval-set.heldout", "merge.ties")
    assert stages["eval.student"].upstream == ("eval-set.heldout",)  # the student is no stage's output
    done = {"process": StageOutcome("process", "k", tmp_path, False, 0.0, 0.0, None)}  # type: ignore[arg-type]
    up = Finished(done, stages["build-sft"])
    assert up.key("process") == "k"
    with pytest.raises(KeyError, match="stage build-sft reads generate.tiny-teacher, which is not among"):
        up.path("generate.tiny-teacher")


def test_dry_run_knows_the_keys_up_to_the_sft_set_and_finished_folders_after_it(tmp_path):
    from branchmerge.recipe.plan import plan_recipe

    recipe = load_recipe(demo_recipe_path(), QUICK_OVERRIDES)
    base, out = demo_recipe_path().parent, tmp_path / "out"
    cached = {s.name: s.cached for s in plan_recipe(recipe, out, base, probe=False).stages}
    assert list(cached) == [name for name, _ in _with_added(DEMO_QUICK, ADDED_QUICK)]
    assert [cached[n] for n in ("problems", "generate.tiny-teacher", "process", "build-sft")] == [False] * 4
    assert all(c is None for n, c in cached.items() if n.startswith(("train.", "merge.", "eval")))
    assert not out.exists()  # a dry run makes no folder
    keys = dict(_pinned(DEMO_QUICK))
    cache = StageCache(out)
    for name in ("generate.tiny-teacher", "process", "merge.ties"):
        cache.path_of(name, keys[name]).mkdir(parents=True)
        (cache.path_of(name, keys[name]) / "stage.json").write_text("{}")
    cached = {s.name: s.cached for s in plan_recipe(recipe, out, base, probe=False).stages}
    assert [cached[n] for n in ("problems", "generate.tiny-teacher", "process", "build-sft")] == [
        False, True, True, False
    ]  # fmt: skip
    assert cached["merge.ties"] is True and cached["merge.slerp-add-sort"] is None
    # a stage found by its key is noted with what it reported; a folder without a stage record says so
    summary = {"teacher": "tiny-teacher", "traces": 96, "errors": 2, "truncated": 0, "requests_this_run": 96}
    record = {"name": "generate.tiny-teacher", "seconds": 1.0, "summary": summary}
    (cache.path_of("generate.tiny-teacher", keys["generate.tiny-teacher"]) / "stage.json").write_text(
        json.dumps(record)
    )
    notes = {s.name: s.note for s in plan_recipe(recipe, out, base, probe=False).stages}
    assert notes["generate.tiny-teacher"] == "traces=96, errors=2"
    assert notes["process"].endswith(
        "stage.json: not a stage record (no summary or seconds); delete the folder"
    )
    assert notes["build-sft"] == ""
