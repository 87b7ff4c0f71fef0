"""`run --dry-run`: check what can be checked without running, and say what the run will do and cost.

Nothing here trains, generates or downloads. Findings come in three kinds: `errors` (the recipe cannot run as
written: the command fails), `todo` (inputs not here yet: data files, a Hub model not in the local cache, an API
key, an endpoint that does not answer — reported, because a plan is often made before they exist) and `warnings`
(it will run, but look: merge rules that never apply, a method this machine cannot run, a stage that needs more
GPU memory than this machine has).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from branchmerge.errors import BranchmergeError
from branchmerge.recipe.cache import StageCache
from branchmerge.recipe.graph import build_stages
from branchmerge.recipe.plan_costs import (
    TeacherLoad,
    TrainLoad,
    estimate_teachers,
    estimate_training,
    prompt_counter,
)
from branchmerge.recipe.resolve import (
    STUDENT,
    check_recipe,
    data_path,
    model_names,
    resolve_merge,
)
from branchmerge.recipe.schema import Recipe
from branchmerge.recipe.stage_api import Env, NotKnown
from branchmerge.records import Problem, read_jsonl, write_jsonl
from branchmerge.train.memory import Shape, shape_from_config


@dataclass
class PlannedStage:
    name: str
    cached: bool | None  # None: its key depends on a stage that has not run yet
    note: str = ""


@dataclass
class Plan:
    recipe: str
    errors: list[str] = field(default_factory=list)
    todo: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    endpoints: list[tuple[str, str, str]] = field(default_factory=list)  # (teacher, url, status)
    stages: list[PlannedStage] = field(default_factory=list)
    teachers: list[TeacherLoad] = field(default_factory=list)
    training: list[TrainLoad] = field(default_factory=list)
    problems: dict[str, int] = field(default_factory=dict)  # training problems per domain (when known)
    eval_items: dict[str, int] = field(default_factory=dict)
    tokens_by: str = ""  # how prompt tokens were counted


def plan_recipe(
    recipe: Recipe, out_dir: str | Path, base_dir: str | Path = ".", *, probe: bool = True
) -> Plan:
    """The plan of `recipe` run into `out_dir`; `probe` asks each endpoint's /v1/models (3 s timeout)."""
    out, base = Path(out_dir), Path(base_dir)
    plan = Plan(recipe.name)
    checked = check_recipe(recipe, base, download=False)
    plan.errors = list(checked.errors)
    plan.todo += checked.missing
    plan.todo += [
        f"{where}: the Hub model '{ref}' is not in the local cache; the run downloads it"
        for where, ref in checked.hub.items()
    ]
    for t in recipe.teachers:
        if t.api_key_env and not os.environ.get(t.api_key_env):
            plan.todo.append(f"teacher {t.name}: set ${t.api_key_env} (its API key)")
        if t.base_url is not None:
            for url in [t.base_url] if isinstance(t.base_url, str) else t.base_url:
                status = _probe(url, t.model, t.api_key_env) if probe else "not probed"
                plan.endpoints.append((t.name, url, status))
                if probe and not status.startswith("ok"):
                    plan.todo.append(f"teacher {t.name}: {url} {status}")

    cache = StageCache(out)
    plan.stages, planned = _stages(recipe, cache, Env(base, checked.paths))
    s_key = planned["build-sft"]
    built = (
        cache.path_of("build-sft", s_key) / "sft.jsonl"
        if s_key and cache.is_done("build-sft", s_key)
        else None
    )
    student = checked.paths.get(STUDENT)
    shape = _student_shape(recipe, student, base, plan)
    if shape is not None:
        _check_merges(recipe, student, shape, plan, built)
    _check_machine(recipe, plan)

    problems, heldout = _problems(recipe, cache, base, planned["problems"], plan)
    counter = prompt_counter(student)
    plan.tokens_by = counter[1]
    plan.teachers = estimate_teachers(recipe, problems, counter, _eval_problems(recipe, base, heldout, plan))
    sft = cache.path_of("build-sft", s_key) / "sft.jsonl" if s_key else None
    plan.training = estimate_training(recipe, problems, counter, shape, sft)
    return plan


def _probe(url: str, model: str | None, key_env: str | None) -> str:
    import httpx

    headers = (
        {"Authorization": f"Bearer {os.environ[key_env]}"} if key_env and os.environ.get(key_env) else {}
    )
    try:
        r = httpx.get(url.rstrip("/") + "/models", headers=headers, timeout=3.0)
    except httpx.HTTPError as e:
        return f"unreachable ({type(e).__name__})"
    if r.status_code != 200:
        return f"answered HTTP {r.status_code} to /models"
    try:
        ids = [m.get("id") for m in r.json().get("data", [])]
    except (ValueError, AttributeError):
        return "answered /models with something that is not an OpenAI model list"
    if model in ids:
        return f"ok, serves {model}"
    return f"reachable, but does not list {model} (lists: {', '.join(map(str, ids[:5])) or 'nothing'})"


def _student_shape(recipe: Recipe, student: Path | None, base: Path, plan: Plan) -> Shape | None:
    """The student's shape from its local config.json, else from `train.student_config`."""
    config_path = student / "config.json" if student is not None else None
    if config_path is None and recipe.train.student_config:
        config_path = data_path(recipe.train.student_config, base)
        if not config_path.exists():
            plan.errors.append(f"train.student_config: {config_path} not found")
            return None
    if config_path is None:
        plan.todo.append(
            "train.student: no local config.json (give train.student_config) — merge configs and memory "
            "are not checked"
        )
        return None
    try:
        return shape_from_config(json.loads(config_path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, OSError) as e:
        plan.errors.append(f"{config_path}: not a model config transformers can build ({e})")
        return None


def _check_merges(recipe: Recipe, student: Path | None, shape: Shape, plan: Plan, sft: Path | None) -> None:
    """Each merge config as `merge --explain` sees it. Every recipe model shares the student's tensors, so a
    local student stands in for all of them (symlinks named after the models, so warnings name them).
    Calibration that names no file reads the SFT set `sft`; before build-sft has run, only the set's absence
    is forgiven (and the merge checked without reading data), since the run builds it first."""
    from branchmerge.merge.config import validate_merge_config
    from branchmerge.merge.explain import explain_merge, rule_warnings

    names = [*model_names(recipe), *recipe.merges]
    with tempfile.TemporaryDirectory() as tmp:
        if student is not None:
            for n in names:  # a folder per model (merge configs refuse one folder twice), files linked
                (Path(tmp) / n).mkdir()
                for f in student.resolve().iterdir():
                    (Path(tmp) / n / f.name).symlink_to(f)
        models = {n: (Path(tmp) / n, n) for n in names}
        planned = sft or Path(tmp) / "build-sft" / "sft.jsonl"  # not there yet: the run builds it first
        for name, cfg in recipe.merges.items():
            try:
                resolved = resolve_merge(cfg, models, str(planned))
                warnings = None
                if student is not None:
                    try:
                        warnings = [w for step in explain_merge(resolved) for w in step.warnings]
                    except BranchmergeError as e:
                        unbuilt = f"{planned}: calibration file not found"
                        if sft is not None or any(x and unbuilt not in x for x in str(e).splitlines()):
                            raise
                if warnings is None:  # no weights to read, or no SFT set yet: the rules alone
                    warnings = rule_warnings(validate_merge_config(resolved), list(shape.tensor_names))
            except (BranchmergeError, KeyError) as e:
                plan.errors.append(f"merges.{name}: {str(e).replace(tmp + '/', '')}")
                continue
            plan.warnings += [f"merges.{name}: {w.replace(tmp + '/', '')}" for w in warnings]


def _check_machine(recipe: Recipe, plan: Plan) -> None:
    from branchmerge.train.sft_methods import check_available

    settings = {recipe.train.settings.method: recipe.train.settings}
    for stage in recipe.train.curriculum or []:
        s = recipe.train.settings.model_copy(update=stage.settings)
        settings.setdefault(s.method, s)
    for s in settings.values():
        try:
            check_available(s)
        except BranchmergeError as e:
            plan.warnings.append(f"train.settings: {e}")


def _problems(
    recipe: Recipe, cache: StageCache, base: Path, p_key: str | None, plan: Plan
) -> tuple[list[Problem] | None, list[Problem]]:
    """The training problems and the held-out items: from the cached problems stage, else made once in a temp
    folder (cheap: no model). (None, []) when data files are missing."""
    from branchmerge.recipe.data_stages import problems_stage

    if p_key is None:
        return None, []
    done = cache.path_of("problems", p_key)
    with tempfile.TemporaryDirectory() as tmp:
        if not cache.is_done("problems", p_key):
            done = Path(tmp)
            try:
                problems_stage(recipe.problems, base, done)
            except BranchmergeError as e:
                plan.errors.append(str(e))
                return None, []
        problems = read_jsonl(done / "train.jsonl", Problem)
        heldout = read_jsonl(done / "eval.jsonl", Problem)
    for p in problems:
        plan.problems[p.domain] = plan.problems.get(p.domain, 0) + 1
    return problems, heldout


def _eval_problems(
    recipe: Recipe, base: Path, heldout: list[Problem], plan: Plan
) -> dict[str, list[Problem] | None]:
    from branchmerge.recipe.data_stages import eval_set_stage

    found: dict[str, list[Problem] | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        heldout_file = Path(tmp) / "heldout.jsonl"
        write_jsonl(heldout_file, heldout)
        for i, s in enumerate(recipe.eval.sets):
            label = s.label or s.name
            if s.path and not data_path(s.path, base).exists():
                found[label] = None
                continue
            work = Path(tmp) / f"set{i}"
            work.mkdir()
            try:
                eval_set_stage(s, heldout_file, base, work)
            except BranchmergeError as e:
                plan.errors.append(f"eval.sets[{i}]: {e}")
                found[label] = None
                continue
            found[label] = read_jsonl(work / "problems.jsonl", Problem)
            plan.eval_items[label] = len(found[label] or [])
    return found


class _Planned:
    """The keys a dry run knows before running: a stage's key is known when its inputs are here and the keys
    of the stages it reads are known."""

    def __init__(self, keys: dict[str, str | None], cache: StageCache) -> None:
        self.keys, self.cache = keys, cache

    def key(self, stage: str) -> str:
        key = self.keys.get(stage)
        if key is None:
            raise NotKnown(f"{stage}: its key is not known before the run")
        return key

    def path(self, stage: str) -> Path:
        return self.cache.path_of(stage, self.key(stage))


def _stages(recipe: Recipe, cache: StageCache, env: Env) -> tuple[list[PlannedStage], dict[str, str | None]]:
    """Every stage in run order, whether the stage cache already holds it, and the keys known before running.
    A stage found by its key is noted with what it reported when it ran (its summary's one line)."""
    keys: dict[str, str | None] = {}
    rows = []
    for stage in build_stages(recipe, env):
        how, key, cached, note = stage.estimate, None, None, stage.estimate.note
        if how.by == "key":
            with contextlib.suppress(NotKnown):
                key = stage.key(_Planned(keys, cache))
            cached = None if key is None else cache.is_done(stage.name, key)
            if cached and key is not None:
                try:
                    done = cache.finished(stage.name, key, stage.summary)
                    note = done[0].describe() if done is not None else note
                except BranchmergeError as e:
                    note = str(e)
        elif how.by == "name" and keys.get(how.after):
            cached = True if cache.any_done(stage.name) else None
        keys[stage.name] = key
        rows.append(PlannedStage(stage.name, cached, note))
    return rows, keys
