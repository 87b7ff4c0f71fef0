"""Run a recipe: validate everything first, then run the stage DAG with the content-addressed cache."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from branchmerge.errors import BranchmergeError
from branchmerge.evaluate.report import render_report
from branchmerge.evaluate.stats import accuracy_table
from branchmerge.recipe import stages
from branchmerge.recipe.cache import StageCache, StageOutcome, dir_fingerprint, fingerprint
from branchmerge.recipe.schema import Recipe
from branchmerge.records import EvalSample, Problem, SFTExample, read_jsonl
from branchmerge.teachers.local import check_model_dir
from branchmerge.train.branches import MIXTURE, BranchPlan, expert_name, plan_branches

STUDENT = "student"


def resolve_checkpoint(ref: str, base_dir: Path, field_name: str) -> Path:
    """`tinylab:teacher` / `tinylab:student` name the shipped weights; anything else is a folder path."""
    if ref.startswith("tinylab:"):
        from branchmerge.tinylab import weights

        which = ref.split(":", 1)[1]
        if which == "teacher":
            return weights.teacher_dir()
        if which == "student":
            return weights.student_dir()
        raise BranchmergeError(
            f"{field_name}: '{ref}' is not a shipped model (known: tinylab:teacher, tinylab:student)"
        )
    path = Path(ref).expanduser()
    path = path if path.is_absolute() else base_dir / path
    try:
        return check_model_dir(path)
    except BranchmergeError as e:
        raise BranchmergeError(f"{field_name}: {e}") from None


def _model_refs(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, name) of every model a merge config names."""
    refs = []
    if "base_model" in config:
        refs.append(("base_model", str(config["base_model"])))
    for i, m in enumerate(config.get("models", []) or []):
        name = m.get("model") if isinstance(m, dict) else m
        refs.append((f"models[{i}].model", str(name)))
    if isinstance(config.get("tokenizer_source"), str) and config["tokenizer_source"] not in (
        "base",
        "union",
    ):
        refs.append(("tokenizer_source", config["tokenizer_source"]))
    return refs


def expert_groups(recipe: Recipe) -> list[str]:
    """What the recipe splits the student into: its domains, or its teachers' names."""
    if recipe.train.experts == "teacher":
        return [t.name for t in recipe.teachers]
    return list(recipe.problems.domains)


def model_names(recipe: Recipe) -> list[str]:
    names = [STUDENT] + [expert_name(g) for g in expert_groups(recipe)]
    if recipe.train.mixture:
        names.append(MIXTURE)
    return names


def branch_plans(recipe: Recipe, examples: list[SFTExample]) -> list[BranchPlan]:
    """The experts and the mixture of `model_names`, from the built SFT set (errors before any training)."""
    t = recipe.train
    return plan_branches(
        examples,
        t.experts,
        t.mixture,
        t.mixture_budget,
        t.settings,
        groups=expert_groups(recipe),
        curriculum=t.curriculum,
    )


def train_key(s_key: str, student_fp: str, plan: BranchPlan) -> str:
    """A branch's stage key. Domain experts and the mixture without a curriculum keep the keys of the versions
    before teacher experts and curricula existed, so earlier runs of such recipes are reused."""
    where = plan.where
    domains = where.get("domain") if where else None
    parts: list[Any] = [s_key, student_fp, plan.settings.model_dump(), domains]
    if set(where) - {"domain"} or plan.curriculum:
        parts += [where, [st.model_dump() for st in plan.curriculum or []]]
    return fingerprint("train", *parts)


def preflight(recipe: Recipe, base_dir: Path) -> dict[str, Path]:
    """Every check that needs no heavy work, all errors reported at once. Returns resolved checkpoints."""
    from branchmerge.merge import METHODS

    errors: list[str] = []
    paths: dict[str, Path] = {}
    for i, t in enumerate(recipe.teachers):
        if t.checkpoint is not None:
            try:
                paths[f"teacher:{t.name}"] = resolve_checkpoint(
                    t.checkpoint, base_dir, f"teachers[{i}].checkpoint"
                )
            except BranchmergeError as e:
                errors.append(str(e))
    try:
        paths[STUDENT] = resolve_checkpoint(recipe.train.student, base_dir, "train.student")
    except BranchmergeError as e:
        errors.append(str(e))
    known = set(model_names(recipe))
    for name, cfg in recipe.merges.items():
        where = f"merges.{name}"
        if name in known:
            errors.append(f"{where}: the name '{name}' is already a model name; pick another")
        method = cfg.get("merge_method")
        if method not in METHODS:
            errors.append(
                f"{where}.merge_method: '{method}' is not a merge method (known: {', '.join(METHODS)})"
            )
        for field_name, ref in _model_refs(cfg):
            if ref not in known:
                errors.append(
                    f"{where}.{field_name}: '{ref}' is not a model of this recipe or an earlier merge "
                    f"(known: {', '.join(sorted(known))})"
                )
        known.add(name)
    if recipe.eval.baseline not in known:
        errors.append(f"eval.baseline: '{recipe.eval.baseline}' is not a model of this recipe")
    if errors:
        raise BranchmergeError("\n".join(errors))
    return paths


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
    out = Path(out_dir)
    paths = preflight(recipe, Path(base_dir))
    cache = StageCache(out)
    result = RunResult(out)

    def stage(name: str, key: str, fn: Any) -> StageOutcome:
        o = cache.run(name, key, fn)
        result.stages.append(o)
        status = "[cyan]reused[/cyan]" if o.reused else "[green]ran[/green]   "
        secs = o.original_seconds if o.reused else o.seconds
        console.print(f"  {status} {escape(name):<28} {secs:7.1f} s  {escape(_describe(o))}")
        return o

    # problems → traces → verified traces → SFT set
    p_key = fingerprint("problems", recipe.problems.model_dump())
    po = stage("problems", p_key, lambda w: stages.problems_stage(recipe.problems, w))
    train_problems = read_jsonl(po.path / "train.jsonl", Problem)
    eval_problems = read_jsonl(po.path / "eval.jsonl", Problem)

    trace_files, g_keys = [], []
    for t in recipe.teachers:
        ckpt = paths.get(f"teacher:{t.name}")
        who = dir_fingerprint(ckpt) if ckpt else (t.base_url, t.model)
        g_key = fingerprint(
            "generate", p_key, t.model_dump(exclude={"max_concurrency"}), who, recipe.generate.model_dump()
        )
        go = stage(
            f"generate.{t.name}",
            g_key,
            lambda w, t=t, ckpt=ckpt: stages.generate_stage(
                train_problems, t, recipe.generate, ckpt, w, show_progress
            ),
        )
        trace_files.append(go.path / "traces.jsonl")
        g_keys.append(g_key)
    pspec = recipe.process
    judge = None
    if pspec.judge is not None:
        jt = next(t for t in recipe.teachers if t.name == pspec.judge)
        judge = (jt, paths.get(f"teacher:{jt.name}"))
    by_student = pspec.difficulty.method == "student" and "difficulty" in pspec.steps
    v_key = fingerprint(
        "process",
        p_key,
        g_keys,
        pspec.model_dump(mode="json"),
        judge[0].model_dump(exclude={"max_concurrency"}) if judge else None,
        dir_fingerprint(judge[1]) if judge and judge[1] else None,
        dir_fingerprint(paths[STUDENT]) if by_student else None,
    )
    vo = stage(
        "process",
        v_key,
        lambda w: stages.process_stage(
            train_problems, trace_files, pspec, judge, paths[STUDENT], w, show_progress
        ),
    )

    student = paths[STUDENT]
    student_fp = dir_fingerprint(student)
    s_key = fingerprint("build-sft", v_key, student_fp, recipe.build_sft.model_dump())
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

    # merges: names in the config resolve to this run's models, including earlier merges ((A & B) & C)
    for name, cfg in recipe.merges.items():
        resolved = _resolve_merge(cfg, models)
        keyed = _resolve_merge(cfg, {k: (Path(v[1]), v[1]) for k, v in models.items()})
        key = fingerprint("merge", keyed)
        o = stage(
            f"merge.{name}", key, lambda w, resolved=resolved: stages.merge_stage(resolved, w, show_progress)
        )
        models[name] = (o.path / "model", key)

    # evaluation of every model on the held-out items, then the report
    e_spec = recipe.eval
    samples: list[EvalSample] = []
    for name, (mdir, mkey) in models.items():
        key = fingerprint("eval", p_key, mkey, name, e_spec.model_dump(exclude={"baseline"}))
        o = stage(
            f"eval.{name}",
            key,
            lambda w, mdir=mdir, name=name: stages.eval_stage(
                mdir, name, eval_problems, e_spec, w, show_progress
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
        merges={name: _parents(cfg) for name, cfg in recipe.merges.items()},
        problems=eval_problems,
    )
    return result


def _parents(cfg: dict[str, Any]) -> list[str]:
    """The models a merge config combines, for the report's merge-synergy table (does the merge beat every one of
    them?). A TIES/DARE base that is not among `models` is the origin of the task vectors, not a parent."""
    return list(dict.fromkeys(str(m["model"]) for m in cfg.get("models", [])))


def _resolve_merge(cfg: dict[str, Any], models: dict[str, tuple[Path, str]]) -> dict[str, Any]:
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
    for d in recipe.problems.domains:
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
