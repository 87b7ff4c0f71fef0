"""Merge search: Optuna samples the template's spaces, each trial merges and scores the result per domain.

    from branchmerge.merge.search import search_merges
    result = search_merges("search.yaml", "runs/search")   # result.pareto, result.best, result.baselines

One objective per domain, so `study.best_trials` is the Pareto front across domains. Everything lives in the
out folder: `study.db` (Optuna's SQLite storage: a rerun resumes, finished trials are never rerun, a trial
killed mid-way is marked failed and its parameters retried), `trials.jsonl` (one row per finished trial:
parameters, concrete config, scores, mean, seconds) and `best.yaml` (the best-by-mean config as plain mergekit
YAML; one document per step for a sequence). The sampler is seeded with `seed` + the number of trials already
in the study, so a resumed TPE does not replay its first random draws.

A sampled point the merge refuses (e.g. linear weights summing to 0 mid-range) or that scores NaN fails that
trial only, with its reason kept; any other error stops the search, and a rerun resumes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState
from pydantic import BaseModel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from branchmerge.errors import BranchmergeError
from branchmerge.merge.config import validate_merge_config
from branchmerge.merge.engine import run_merge
from branchmerge.merge.search_check import check_search
from branchmerge.merge.search_score import DevData, score_model
from branchmerge.merge.search_space import Slot, suggest
from branchmerge.merge.search_spec import SearchSpec, Template, load_search_spec, parse_search_spec
from branchmerge.records import append_jsonl, atomic_write_text, read_jsonl

STUDY = "merge-search"


class TrialRecord(BaseModel):
    """One finished trial, as a row of `trials.jsonl`."""

    trial: int
    params: dict[str, Any]  # slot path -> sampled value (a gradient is a list, an order the model list)
    config: dict[str, Any] | list[dict[str, Any]]  # the concrete merge config (a list: sequential steps)
    scores: dict[str, float]  # domain -> score
    mean: float
    seconds: float
    model_dir: str | None = None  # the merged weights, when kept


@dataclass(frozen=True)
class SearchResult:
    out_dir: Path
    domains: list[str]
    direction: Literal["minimize", "maximize"]
    trials: list[TrialRecord]  # finished trials, by number
    pareto: list[TrialRecord]  # not dominated across domains
    best_by_domain: dict[str, TrialRecord]
    best: TrialRecord | None  # best mean score
    baselines: dict[str, dict[str, float]]  # input model -> domain -> score, unmerged
    failed: dict[int, str]  # trial -> why (killed trials were retried)


def _mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


def _best(rows: list[TrialRecord], key: Any, direction: str) -> TrialRecord:
    return (min if direction == "minimize" else max)(rows, key=key)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One search per out folder at a time: two would share the study and the trial folders."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BranchmergeError(f"{out}: another merge-search is running on this folder") from None
        yield


def _open_study(spec: SearchSpec, out: Path) -> optuna.Study:
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    directions = [spec.direction] * len(spec.domains)
    study = optuna.create_study(storage=storage, study_name=STUDY, directions=directions, load_if_exists=True)
    what = json.loads(json.dumps({"template": spec.template, "objective": spec.objective.model_dump()}))
    before = study.user_attrs.get("spec")
    if before is None:
        study.set_user_attr("spec", what)
    elif before != what:
        differ = " and ".join(k for k in what if before.get(k) != what[k])
        raise BranchmergeError(
            f"{out}: holds a search with another {differ}; use a new --out, or the spec it was run with"
        )
    seed = spec.seed + len(study.trials)
    study.sampler = (
        optuna.samplers.TPESampler(seed=seed)
        if spec.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    return study


def _retry_killed(study: optuna.Study) -> None:
    """A trial still RUNNING belongs to a run that died (the lock rules out a live one): fail it, retry it."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params)


def _clean_trial_folders(study: optuna.Study, out: Path, spec: SearchSpec) -> None:
    """Remove what unfinished trials left, and weights `keep` no longer asks for."""
    rows = _rows(study)
    kept = {r.trial for r in rows} if spec.keep == "all" else set()
    if spec.keep == "best" and rows:
        kept = {_best(rows, lambda r: r.mean, spec.direction).trial}
    folders = (out / "trials").iterdir() if (out / "trials").is_dir() else iter(())
    for folder in folders:
        if folder.name not in {f"{n:04d}" for n in kept}:
            shutil.rmtree(folder, ignore_errors=True)


def _rows(study: optuna.Study) -> list[TrialRecord]:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [TrialRecord.model_validate(t.user_attrs["row"]) for t in sorted(done, key=lambda t: t.number)]


def _sync_rows(study: optuna.Study, path: Path) -> None:
    """Append rows of finished trials the file lacks (a run killed between Optuna's record and ours)."""
    have = {r.trial for r in read_jsonl(path, TrialRecord)} if path.exists() else set()
    append_jsonl(path, [r for r in _rows(study) if r.trial not in have])


def _baselines(spec: SearchSpec, template: Template, data: DevData, study: optuna.Study, out: Path) -> None:
    if not spec.baselines or "baselines" in study.user_attrs:
        return
    scores = {}
    for model in template.input_models():
        scores[model] = score_model(model, spec.objective, data, out / "baselines")
    shutil.rmtree(out / "baselines", ignore_errors=True)
    study.set_user_attr("baselines", scores)


class _Runner:
    """The objective and the after-trial callback, sharing the spec, data and out folder."""

    def __init__(self, spec: SearchSpec, template: Template, data: DevData, out: Path) -> None:
        self.spec, self.template, self.data, self.out = spec, template, data, out

    def objective(self, trial: Trial) -> list[float]:
        start = time.perf_counter()
        params: dict[str, Any] = {}

        def pick(slot: Slot) -> Any:
            params[slot.path] = suggest(trial, slot)
            return params[slot.path]

        config = self.template.fill(pick)
        trial_dir = self.out / "trials" / f"{trial.number:04d}"
        keep = self.spec.keep != "none"
        shutil.rmtree(trial_dir, ignore_errors=True)
        try:
            run_merge(config, trial_dir / "model", show_progress=False)
            scores = score_model(trial_dir / "model", self.spec.objective, self.data, trial_dir)
            bad = [f"{d} = {v}" for d, v in scores.items() if not math.isfinite(v)]
            if bad:
                raise BranchmergeError(f"the merged model scores {', '.join(bad)}")
        except BranchmergeError as e:
            trial.set_user_attr("error", str(e))
            keep = False
            raise
        finally:
            if not keep:
                shutil.rmtree(trial_dir, ignore_errors=True)
        row = TrialRecord(
            trial=trial.number,
            params=params,
            config=config,
            scores=scores,
            mean=_mean(scores),
            seconds=round(time.perf_counter() - start, 3),
            model_dir=str(trial_dir / "model") if keep else None,
        )
        trial.set_user_attr("row", row.model_dump(mode="json"))
        return [scores[d] for d in self.spec.domains]

    def after(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state != TrialState.COMPLETE:
            return
        append_jsonl(self.out / "trials.jsonl", [TrialRecord.model_validate(trial.user_attrs["row"])])
        if self.spec.keep == "best":
            _clean_trial_folders(study, self.out, self.spec)


def _write_best(best: TrialRecord, out: Path) -> None:
    """Plain mergekit YAML; a sequence is one document per step, as `load_merge_configs` reads it."""
    steps = best.config if isinstance(best.config, list) else [best.config]
    text = "---\n".join(validate_merge_config(step).to_yaml() for step in steps)
    atomic_write_text(
        out / "best.yaml", f"# merge-search trial {best.trial}, mean score {best.mean:.6g}\n{text}"
    )


def _result(spec: SearchSpec, study: optuna.Study, out: Path) -> SearchResult:
    rows = _rows(study)
    by_number = {r.trial: r for r in rows}
    domains, direction = spec.domains, spec.direction
    best = _best(rows, lambda r: r.mean, direction) if rows else None
    if best is not None:
        _write_best(best, out)
    return SearchResult(
        out_dir=out,
        domains=domains,
        direction=direction,
        trials=rows,
        pareto=sorted((by_number[t.number] for t in study.best_trials), key=lambda r: r.trial)
        if rows
        else [],
        best_by_domain={d: _best(rows, lambda r, d=d: r.scores[d], direction) for d in domains}
        if rows
        else {},
        best=best,
        baselines=dict(study.user_attrs.get("baselines", {})),
        failed={
            t.number: t.user_attrs.get("error", "killed; retried")
            for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        },
    )


def search_merges(
    spec: SearchSpec | dict | str | Path,
    out_dir: str | Path,
    *,
    trials: int | None = None,
    show_progress: bool = True,
) -> SearchResult:
    """Run (or resume) the search: as many trials as bring the finished ones in `out_dir` to `trials` (default:
    the spec's). A failed trial uses up its place; a rerun tops up.

    `spec` is a SearchSpec, a dict of the YAML's content or the path of a YAML file. The whole spec is checked
    against the disk before the first merge; bad input raises BranchmergeError naming the file and field.
    """
    if isinstance(spec, dict):
        spec = parse_search_spec(spec)
    elif not isinstance(spec, SearchSpec):
        spec = load_search_spec(spec)
    template = spec.parsed_template()
    data = check_search(spec, template)
    out = Path(out_dir)
    with _locked(out):
        study = _open_study(spec, out)
        _retry_killed(study)
        _clean_trial_folders(study, out, spec)
        _sync_rows(study, out / "trials.jsonl")
        _baselines(spec, template, data, study, out)
        n_done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        todo = max(0, (spec.trials if trials is None else trials) - n_done)
        runner = _Runner(spec, template, data, out)
        columns = (TextColumn("[bold]merge-search"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, disable=not show_progress) as progress:
            task = progress.add_task("trials", total=todo)
            study.optimize(
                runner.objective,
                n_trials=todo,
                catch=(BranchmergeError,),
                callbacks=[runner.after, lambda _s, _t: progress.advance(task)],
            )
        return _result(spec, study, out)
