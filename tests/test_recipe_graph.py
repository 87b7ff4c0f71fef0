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

# Computed by the runner as it was before recipe/graph.py existed (commit 3a20f5a, every stage wired by hand in
# run_recipe): `branchmerge demo --quick` made exactly these folders, `<name>-<key>`. A changed key makes every
# earlier run's cache miss, so these must not change.
DEMO_QUICK = """
problems 602ea913f2f3
generate.tiny-teacher 57e083671002
process 42991e33792b
build-sft 778e392680d7
train.expert-add 65212934a52a
train.expert-sort 4ad2b0c1efa2
train.expert-compare f48e4404e6be
train.mixture ae9f45e6df8c
merge.slerp-add-sort 44fa8154b2f5
merge.ties 56828c953ff0
merge.fusion-add-sort 491395aed769
merge.fusion-all e8d478b990b2
eval-set.heldout cd43e02deab2
eval.student c5d3aea46dd8
eval.expert-add c15628ca67f4
eval.expert-sort e876a7d9b875
eval.expert-compare cb26ca3a3c19
eval.mixture 1ea4918cd854
eval.slerp-add-sort 9f0f84bb4a5e
eval.ties ddf49f4a6ee7
eval.fusion-add-sort ceeba2be1378
eval.fusion-all e69a83a04616
"""
DEMO_FULL = """
problems e50a1ee483ee
generate.tiny-teacher 3a951fdf143a
process bef6628ee5d0
build-sft f82935f6305b
train.expert-add fc252e30374d
train.expert-sort faecc6d68c6f
train.expert-compare f69a8120fe11
train.mixture 6841be6eb60b
merge.slerp-add-sort 61434918052d
merge.ties a2a116cafab3
merge.fusion-add-sort 95999e57e7a4
merge.fusion-all b25e4dd6f219
eval-set.heldout 82f90439f421
eval.student 00dc2ee9843b
eval.expert-add 06a4d52c34f6
eval.expert-sort 1f454bcd1996
eval.expert-compare 59761c4cbebd
eval.mixture baf75f367651
eval.slerp-add-sort 2386c574f92d
eval.ties 90bbdade4005
eval.fusion-add-sort 06e9ee910896
eval.fusion-all 2c3328f9d577
"""

# Stages added since, with their keys; each runs after the trainings it reads, and no earlier key moved.
ADDED_QUICK = {"mergeability": "e5cf410bb867"}
ADDED_FULL = {"mergeability": "0543e5331f69"}


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
