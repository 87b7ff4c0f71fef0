"""Run a recipe: validate everything first, then run the stage DAG with the content-addressed cache."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from branchmerge.evaluate.report import render_report
from branchmerge.evaluate.stats import accuracy_table
from branchmerge.recipe import data_stages, stages
from branchmerge.recipe.cache import StageCache, StageOutcome, dir_fingerprint, fingerprint
from branchmerge.recipe.describe import describe_models
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
from branchmerge.recipe.resolve import STUDENT, branch_plans, evaluated_models, judge_of, preflight
from branchmerge.recipe.schema import Recipe, TeacherSpec
from branchmerge.records import EvalSample, Problem, SFTExample, read_jsonl
from branchmerge.teachers.config import TeacherConfig


@dataclass
class RunResult:
    out_dir: Path
    stages: list[StageOutcome] = field(default_factory=list)
    accuracy: dict[str, dict[str, tuple[float, int]]] = field(default_factory=dict)
    report: Path | None = None


def _describe(o: StageOutcome) -> str:
    s = o.summary
    keys = (
        "train",
        "eval",
        "traces",
        "errors",
        "kept",
        "dropped",
        "examples",
        "too_long",
        "steps",
        "final_loss",
        "tensors",
    )
    parts = [f"{k}={s[k]}" for k in keys if k in s]
    if "accuracy" in s:
        parts.append(f"accuracy={100 * s['accuracy'].get('all', 0):.1f}%")
    return ", ".join(parts)


def run_recipe(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    base_dir: str | Path = ".",
    show_progress: bool = True,
    console: Console | None = None,
) -> RunResult:
    console = console or Console()
    out, base = Path(out_dir), Path(base_dir)
    paths = preflight(recipe, base)
    cache = StageCache(out)
    result = RunResult(out)

    def stage(name: str, key: str, fn: Any) -> StageOutcome:
        o = cache.run(name, key, fn)
        result.stages.append(o)
        status = "[cyan]reused[/cyan]" if o.reused else "[green]ran[/green]   "
        secs = o.original_seconds if o.reused else o.seconds
        console.print(f"  {status} {escape(name):<28} {secs:7.1f} s  {escape(_describe(o))}")
        return o

    # problems → traces → processed traces → SFT set
    p_key = problems_key(recipe, base)
    po = stage("problems", p_key, lambda w: data_stages.problems_stage(recipe.problems, base, w))
    train_problems = read_jsonl(po.path / "train.jsonl", Problem)

    trace_files, g_keys = [], []
    for t in (t for t in recipe.teachers if t.generates):
        ckpt = paths.get(f"teacher:{t.name}")
        g_key = generate_key(recipe, t, p_key, ckpt)
        go = stage(
            f"generate.{t.name}",
            g_key,
            lambda w, t=t, ckpt=ckpt: stages.generate_stage(
                train_problems, t, recipe.generate, ckpt, w, show_progress, recipe.engine
            ),
        )
        trace_files.append(go.path / "traces.jsonl")
        g_keys.append(g_key)
    pspec = recipe.process
    judge = judge_of(recipe, pspec.judge, paths)
    v_key = process_key(recipe, p_key, g_keys, judge, paths[STUDENT])
    vo = stage(
        "process",
        v_key,
        lambda w: stages.process_stage(
            train_problems, trace_files, pspec, judge, paths[STUDENT], w, show_progress, recipe.engine
        ),
    )

    student = paths[STUDENT]
    student_fp = dir_fingerprint(student)
    s_key = build_sft_key(v_key, student_fp, recipe)
    so = stage(
        "build-sft",
        s_key,
        lambda w: stages.build_sft_stage(
            train_problems, vo.path / "processed.jsonl", student, recipe.build_sft, w
        ),
    )

    # experts and the data-mixture baseline, all from the same student with the same seed
    models: dict[str, tuple[Path, str]] = {STUDENT: (student, student_fp)}
    sft_file = so.path / "sft.jsonl"
    for plan in branch_plans(recipe, read_jsonl(sft_file, SFTExample)):
        key = train_key(s_key, student_fp, plan)
        o = stage(
            f"train.{plan.name}",
            key,
            lambda w, plan=plan: stages.train_stage(sft_file, student, plan, w, show_progress),
        )
        models[plan.name] = (o.path / "model", key)

    # RV / CD reward models, then a GRPO stage from a trained model (rewarded by them when present)
    r_dir = None
    if recipe.reward_models is not None:
        rspec = recipe.reward_models
        r_key = fingerprint("reward-models", v_key, student_fp, rspec.model_dump())
        ro = stage(
            "reward-models",
            r_key,
            lambda w: stages.reward_models_stage(
                train_problems, vo.path / "processed.jsonl", student, rspec, w, show_progress
            ),
        )
        r_dir = (ro.path, r_key)
    if recipe.grpo is not None:
        gspec = recipe.grpo
        start = models[gspec.start]
        key = fingerprint("grpo", p_key, start[1], r_dir[1] if r_dir else None, gspec.model_dump())
        o = stage(
            f"grpo.{gspec.name}",
            key,
            lambda w: stages.grpo_stage(
                train_problems, start[0], r_dir[0] if r_dir else None, gspec, w, show_progress
            ),
        )
        models[gspec.name] = (o.path / "model", key)

    # merges: names in the config resolve to this run's models, including earlier merges ((A & B) & C)
    for name, cfg in recipe.merges.items():
        resolved = resolve_merge(cfg, models)
        keyed = resolve_merge(cfg, {k: (Path(v[1]), v[1]) for k, v in models.items()})
        key = fingerprint("merge", keyed)
        o = stage(
            f"merge.{name}", key, lambda w, resolved=resolved: stages.merge_stage(resolved, w, show_progress)
        )
        models[name] = (o.path / "model", key)

    # every model on every eval set (a judge, when named, is started once, at the first stage that needs it)
    e_spec = recipe.eval
    samples: list[EvalSample] = []
    eval_problems: list[Problem] = []
    with contextlib.ExitStack() as stack:
        eval_judge = _LazyEndpoint(stack, judge_of(recipe, e_spec.judge, paths), recipe.engine)
        for set_spec in e_spec.sets:
            label = set_spec.label or set_spec.name
            set_key = eval_set_key(set_spec, p_key, base)
            eo = stage(
                f"eval-set.{label}",
                set_key,
                lambda w, s=set_spec: data_stages.eval_set_stage(s, po.path / "eval.jsonl", base, w),
            )
            items = read_jsonl(eo.path / "problems.jsonl", Problem)
            eval_problems += items
            sampling = e_spec.sampling(set_spec)
            for name in evaluated_models(recipe):
                mdir, mkey = models[name]
                key = eval_key(set_key, mkey, name, sampling, e_spec, set_spec)
                o = stage(
                    eval_stage_name(name, label, e_spec),
                    key,
                    lambda w, mdir=mdir, name=name, items=items, label=label, sampling=sampling: (
                        stages.eval_stage(
                            mdir,
                            name,
                            items,
                            label,
                            sampling,
                            eval_judge.get(),
                            w,
                            show_progress,
                            recipe.engine,
                        )
                    ),
                )
                samples += read_jsonl(o.path / "samples.jsonl", EvalSample)

    result.accuracy = accuracy_table(samples)
    rows = [(o.name, "reused" if o.reused else "ran", o.original_seconds) for o in result.stages]
    result.report = render_report(
        samples,
        out,
        baseline=e_spec.baseline,
        stage_times=rows,
        notes=_notes(recipe, result.accuracy, result.stages),
        title=f"{recipe.name}: results",
        merges=merge_parents(recipe, {s.model for s in samples}),
        problems=eval_problems,
        max_k=e_spec.max_k,
        models=describe_models(recipe, result.stages),
    )
    return result


class _LazyEndpoint:
    """A judge endpoint entered into `stack` on first use, so a fully cached evaluation starts no server."""

    def __init__(
        self, stack: contextlib.ExitStack, judge: tuple[TeacherSpec, Path | None] | None, engine: str
    ) -> None:
        self.stack, self.judge, self.engine = stack, judge, engine
        self.cfg: TeacherConfig | None = None

    def get(self) -> TeacherConfig | None:
        if self.judge is not None and self.cfg is None:
            self.cfg = self.stack.enter_context(stages.teacher_endpoint(*self.judge, self.engine))
        return self.cfg


def merge_parents(recipe: Recipe, evaluated: set[str]) -> dict[str, list[str]]:
    """For the report's merge-synergy table: each evaluated merge and the evaluated models it combines (does the
    merge beat every one of them?). A TIES/DARE base that is not among `models` is the origin of the task
    vectors, not a parent; an intermediate merge that was not evaluated stands for its own parents, so
    (A & B) & C is compared with A, B and C."""

    def parents(name: str) -> list[str]:
        out: list[str] = []
        for entry in recipe.merges[name].get("models", []) or []:
            m = str(entry["model"] if isinstance(entry, dict) else entry)
            out += parents(m) if m in recipe.merges and m not in evaluated else [m]
        return list(dict.fromkeys(p for p in out if p in evaluated))

    found = {name: parents(name) for name in recipe.merges if name in evaluated}
    return {name: ps for name, ps in found.items() if ps}


def resolve_merge(cfg: dict[str, Any], models: dict[str, tuple[Path, str]]) -> dict[str, Any]:
    c = copy.deepcopy(cfg)
    if "base_model" in c:
        c["base_model"] = str(models[str(c["base_model"])][0])
    for m in c.get("models", []):
        m["model"] = str(models[str(m["model"])][0])
    ts = c.get("tokenizer_source")
    if isinstance(ts, str) and ts in models:
        c["tokenizer_source"] = str(models[ts][0])
    return c


def _notes(
    recipe: Recipe, acc: dict[str, dict[str, tuple[float, int]]], outcomes: list[StageOutcome]
) -> list[str]:
    notes = []
    base = acc.get(STUDENT, {})
    for d in recipe.problems.train_domains:
        e = acc.get(f"expert-{d}", {}).get(d)
        b = base.get(d)
        if e and b:
            verdict = "beats" if e[0] > b[0] else "does NOT beat"
            notes.append(
                f"expert-{d} {verdict} the student base on {d}: {100 * e[0]:.1f}% vs {100 * b[0]:.1f}%"
            )
    for o in outcomes:
        if o.name == "process":
            s = o.summary
            steps = ", ".join(f"{k} → {v['after']}" for k, v in s["steps"].items())
            notes.append(f"processing kept {s['kept']} of {s['traces']} teacher traces ({steps})")
    reused = [o.name for o in outcomes if o.reused]
    if reused:
        notes.append("reused from an earlier run: " + ", ".join(reused))
    return notes


def print_results(result: RunResult, console: Console | None = None) -> None:
    console = console or Console()
    domains = sorted({d for row in result.accuracy.values() for d in row if d != "all"})
    table = Table(title="accuracy (%) on held-out items")
    table.add_column("model")
    for d in [*domains, "all"]:
        table.add_column(d, justify="right")
    for m, row in result.accuracy.items():
        table.add_row(m, *[f"{100 * row[d][0]:.1f}" if d in row else "–" for d in [*domains, "all"]])
    console.print(table)
    ran = sum(o.seconds for o in result.stages)
    reused = [o.name for o in result.stages if o.reused]
    console.print(f"stages run in {ran:.1f} s; reused: {', '.join(reused) if reused else 'none'}")
    console.print(f"report: {result.report}")
