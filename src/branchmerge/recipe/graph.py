"""The recipe's pipeline in one place: every stage in run order, what it reads, how its cache key is made, what
it runs and what it reports. `run_recipe` (runner.py) and `run --dry-run` (plan.py) are both loops over
`build_stages(recipe, env)`.

    problems                      training problems (tinylab also draws the held-out items)
    generate.<teacher>            traces from each generating teacher
    process                       the CoT processors over all teachers' traces (verify, dedup, judge scores...)
    build-sft                     the SFT set in the student's chat template
    train.expert-<group>          one expert per domain or teacher, from the student
    train.mixture                 the data-mixture baseline
    mergeability                  will the domain experts merge? (two or more domain experts; `mergeability:`)
    reward-models                 RV / CD regressors on the judge's scores        (when `reward_models:` is set)
    grpo.<name>                   GRPO from a trained model, rewarded by them      (when `grpo:` is set)
    merge.<name>                  each merge in recipe order; a merge may use an earlier one ((A & B) & C)
    eval-set.<label>              the items of each eval set
    eval.<model>[.<label>]        every evaluated model on that set (runner.py then writes report.md)

A stage's folder is `<out>/stages/<name>-<key>/` (recipe/cache.py); its key hashes everything that decides its
output (recipe/keys.py), so a rerun reuses exactly the stages whose inputs did not change. Keys and runs read
other stages only through `Upstream`, and only the stages named in `upstream`.

Adding a stage (say `calibration`, after build-sft):
1. its library function, in recipe/stages.py or its part's folder: reads files, writes into its work folder,
   returns a summary model (add one to recipe/summaries.py: `CalibrationSummary(examples, tokens)`);
2. its settings, if it has any, as a section of the recipe (recipe/schema.py: `calibration: CalibrationSpec |
   None = None`, so recipes without it are unchanged);
3. one `Stage` below, where it belongs in the order: its name, the stages it reads, its key (a `fingerprint` of
   its name, its upstream keys and its settings), its run (the library function on the upstream folders) and
   what a dry run can say before running (`Estimate("key")` when its key needs only upstream keys).
Nothing else changes (the runner, the dry run and the cache loop over this list) and no existing key moves. A
stage that reads it names it in `upstream` and finds its folder at `up.path("calibration")`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from branchmerge.recipe import data_stages, mergeability_stage, stages
from branchmerge.recipe.cache import dir_fingerprint, fingerprint
from branchmerge.recipe.keys import (
    build_sft_key,
    eval_key,
    eval_set_key,
    eval_stage_name,
    generate_key,
    problems_key,
    process_key,
    train_key,
)
from branchmerge.recipe.resolve import (
    STUDENT,
    branch_plans,
    data_path,
    evaluated_models,
    expert_and_mixture_names,
    expert_groups,
    judge_of,
    merge_refs,
    resolve_merge,
    takes_sft_calibration,
)
from branchmerge.recipe.schema import Recipe, TeacherSpec
from branchmerge.recipe.specs import EvalSetSpec
from branchmerge.recipe.stage_api import Env, Estimate, NotKnown, Stage, Upstream
from branchmerge.recipe.summaries import (
    BuildSFTSummary,
    EvalSetSummary,
    EvalSummary,
    GenerateSummary,
    GRPOSummary,
    MergeabilitySummary,
    MergeSummary,
    ProblemsSummary,
    ProcessSummary,
    RewardModelsSummary,
    TrainSummary,
)
from branchmerge.records import Problem, SFTExample, read_jsonl
from branchmerge.train.branches import BranchPlan, expert_name


def build_stages(recipe: Recipe, env: Env) -> list[Stage]:
    """Every stage of `recipe`, in the order they run (each after the stages it reads)."""
    base, sp = env.base, env.show_progress
    out: list[Stage] = []

    @cache
    def problems(folder: Path, name: str) -> list[Problem]:  # read once per run, not once per stage
        return read_jsonl(folder / name, Problem)

    def train_problems(up: Upstream) -> list[Problem]:
        return problems(up.path("problems"), "train.jsonl")

    @cache
    def student_fp() -> str:
        return dir_fingerprint(env.student())

    # problems -> traces -> processed traces -> SFT set
    def problems_stage_key(up: Upstream) -> str:
        if not all(data_path(f.path, base).exists() for f in recipe.problems.files):
            raise NotKnown("problems: data files missing")
        return problems_key(recipe, base)

    out.append(
        Stage(
            name="problems",
            upstream=(),
            key=problems_stage_key,
            run=lambda up, w: data_stages.problems_stage(recipe.problems, base, w),
            summary=ProblemsSummary,
            estimate=Estimate("key"),
        )
    )

    def generate(t: TeacherSpec) -> Stage:
        return Stage(
            name=f"generate.{t.name}",
            upstream=("problems",),
            key=lambda up: generate_key(recipe, t, up.key("problems"), env.checkpoint(t)),
            run=lambda up, w: stages.generate_stage(
                train_problems(up), t, recipe.generate, env.checkpoint(t), w, sp, recipe.engine
            ),
            summary=GenerateSummary,
            estimate=Estimate("key"),
        )

    generating = [t for t in recipe.teachers if t.generates]
    out += [generate(t) for t in generating]
    traces = tuple(f"generate.{t.name}" for t in generating)
    judge = judge_of(recipe, recipe.process.judge, env.paths)
    out.append(
        Stage(
            name="process",
            upstream=("problems", *traces),
            key=lambda up: process_key(
                recipe, up.key("problems"), [up.key(g) for g in traces], judge, env.student()
            ),
            run=lambda up, w: stages.process_stage(
                train_problems(up),
                [up.path(g) / "traces.jsonl" for g in traces],
                recipe.process,
                judge,
                env.student(),
                w,
                sp,
                recipe.engine,
            ),
            summary=ProcessSummary,
            estimate=Estimate("key", note=f"steps: {', '.join(recipe.process.steps)}"),
        )
    )
    out.append(
        Stage(
            name="build-sft",
            upstream=("problems", "process"),
            key=lambda up: build_sft_key(up.key("process"), student_fp(), recipe),
            run=lambda up, w: stages.build_sft_stage(
                train_problems(up), up.path("process") / "processed.jsonl", env.student(), recipe.build_sft, w
            ),
            summary=BuildSFTSummary,
            estimate=Estimate("key"),
        )
    )

    # experts and the data-mixture baseline, all from the student with the same seed; the plans (which
    # examples, how many steps) come from the built SFT set, checked for every branch before any trains
    @cache
    def plans(sft: Path) -> dict[str, BranchPlan]:
        return {p.name: p for p in branch_plans(recipe, read_jsonl(sft, SFTExample))}

    def plan(up: Upstream, name: str) -> BranchPlan:
        sft = up.path("build-sft") / "sft.jsonl"
        if not sft.is_file():  # a dry run before build-sft has run
            raise NotKnown("build-sft: the SFT set is not built yet")
        return plans(sft)[name]

    def trained_key(up: Upstream, name: str) -> str:
        """A branch's training key, from the SFT set alone (so a dry run knows it once build-sft has run)."""
        return train_key(up.key("build-sft"), student_fp(), plan(up, name))

    def train(name: str) -> Stage:
        return Stage(
            name=f"train.{name}",
            upstream=("build-sft",),
            key=lambda up: trained_key(up, name),
            run=lambda up, w: stages.train_stage(
                up.path("build-sft") / "sft.jsonl", env.student(), plan(up, name), w, sp
            ),
            summary=TrainSummary,
            estimate=Estimate("name", after="build-sft"),
        )

    models: dict[str, str] = {}  # model name -> the stage whose folder holds it in model/
    for name in expert_and_mixture_names(recipe):
        out.append(train(name))
        models[name] = out[-1].name

    # will the domain experts merge? their task vectors and what each forgot of the other domains, before any
    # merge (recipe/mergeability_stage.py); its key is known wherever the SFT set is, so a dry run shows it
    domains = expert_groups(recipe) if recipe.train.experts == "domain" else []
    check = recipe.mergeability
    if len(domains) >= 2 and check.enabled:
        experts = {expert_name(d): d for d in domains}
        out.append(
            Stage(
                name="mergeability",
                upstream=("build-sft", *(models[n] for n in experts)),
                key=lambda up: fingerprint(
                    "mergeability",
                    up.key("build-sft"),
                    {n: trained_key(up, n) for n in experts},
                    check.examples,
                ),
                run=lambda up, w: mergeability_stage.mergeability_stage(
                    up.path("build-sft") / "sft.jsonl",
                    env.student(),
                    {n: (up.path(models[n]) / "model", d) for n, d in experts.items()},
                    check.examples,
                    w,
                    sp,
                ),
                summary=MergeabilitySummary,
                estimate=Estimate("key", note="not cached"),
            )
        )

    def model(up: Upstream, name: str) -> tuple[Path, str]:
        """A model's folder and key: the student's own, or the model/ folder of the stage that made it."""
        if name == STUDENT:
            return env.student(), student_fp()
        return up.path(models[name]) / "model", up.key(models[name])

    def stages_of(names: list[str]) -> tuple[str, ...]:
        """The stages that make these models (a name no model has is the dry run's error to report)."""
        return tuple(dict.fromkeys(models[n] for n in names if n in models))

    # RV / CD reward models, then GRPO from a trained model (rewarded by them when present)
    rewards = recipe.reward_models
    if rewards is not None:
        out.append(
            Stage(
                name="reward-models",
                upstream=("problems", "process"),
                key=lambda up: fingerprint(
                    "reward-models", up.key("process"), student_fp(), rewards.model_dump()
                ),
                run=lambda up, w: stages.reward_models_stage(
                    train_problems(up), up.path("process") / "processed.jsonl", env.student(), rewards, w, sp
                ),
                summary=RewardModelsSummary,
                estimate=Estimate("name", after="process"),
            )
        )
    grpo = recipe.grpo
    if grpo is not None:
        scorers = "reward-models" if rewards is not None else None
        out.append(
            Stage(
                name=f"grpo.{grpo.name}",
                upstream=("problems", *stages_of([grpo.start]), *([scorers] if scorers else [])),
                key=lambda up: fingerprint(
                    "grpo",
                    up.key("problems"),
                    model(up, grpo.start)[1],
                    up.key(scorers) if scorers else None,
                    grpo.model_dump(),
                ),
                run=lambda up, w: stages.grpo_stage(
                    train_problems(up),
                    model(up, grpo.start)[0],
                    up.path(scorers) if scorers else None,
                    grpo,
                    w,
                    sp,
                ),
                summary=GRPOSummary,
                estimate=Estimate("name", after="build-sft"),
            )
        )
        models[grpo.name] = f"grpo.{grpo.name}"

    # merges: names in a config resolve to this run's models, including earlier merges; the key hashes the
    # config with each model named by its key; a data-aware merge whose calibration names no file reads the SFT
    # set (its key stands for the file in the merge's key)
    def merge(name: str, cfg: dict[str, Any]) -> Stage:
        refs = [ref for _, ref in merge_refs(cfg)]
        data = ("build-sft",) if takes_sft_calibration(cfg) else ()
        return Stage(
            name=f"merge.{name}",
            upstream=(*data, *stages_of(refs)),
            key=lambda up: fingerprint(
                "merge",
                resolve_merge(
                    cfg,
                    {r: (Path(model(up, r)[1]), model(up, r)[1]) for r in refs},
                    up.key("build-sft") if data else None,
                ),
            ),
            run=lambda up, w: stages.merge_stage(
                resolve_merge(
                    cfg,
                    {r: model(up, r) for r in refs},
                    str(up.path("build-sft") / "sft.jsonl") if data else None,
                ),
                w,
                sp,
            ),
            summary=MergeSummary,
            estimate=Estimate("name", after="build-sft"),
        )

    for name, cfg in recipe.merges.items():
        out.append(merge(name, cfg))
        models[name] = out[-1].name

    # every evaluated model on every eval set (a judge, when named, starts at the first eval stage that runs)
    e = recipe.eval
    eval_judge = judge_of(recipe, e.judge, env.paths)

    def eval_set(s: EvalSetSpec) -> Stage:
        return Stage(
            name=f"eval-set.{s.label or s.name}",
            upstream=("problems",),
            key=lambda up: eval_set_key(s, up.key("problems"), base),
            run=lambda up, w: data_stages.eval_set_stage(s, up.path("problems") / "eval.jsonl", base, w),
            summary=EvalSetSummary,
            estimate=Estimate("none", note=f"{e.sampling(s)['n']} sample(s) per item"),
        )

    def evaluation(m: str, s: EvalSetSpec, items: str) -> Stage:
        label, sampling = s.label or s.name, e.sampling(s)
        return Stage(
            name=eval_stage_name(m, label, e),
            upstream=(items, *stages_of([m])),
            key=lambda up: eval_key(up.key(items), model(up, m)[1], m, sampling, e, s),
            run=lambda up, w: stages.eval_stage(
                model(up, m)[0],
                m,
                problems(up.path(items), "problems.jsonl"),
                label,
                sampling,
                env.endpoint(eval_judge, recipe.engine),
                w,
                sp,
                recipe.engine,
            ),
            summary=EvalSummary,
            estimate=Estimate("none"),
        )

    for s in e.sets:
        out.append(eval_set(s))
        out += [evaluation(m, s, out[-1].name) for m in evaluated_models(recipe)]
    return out
