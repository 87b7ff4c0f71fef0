"""The recipe's data stages: training problems from any source, and the items of each eval set."""

from __future__ import annotations

import hashlib
from pathlib import Path

from branchmerge.errors import BranchmergeError
from branchmerge.recipe.specs import EvalSetSpec, ProblemFile, ProblemsSpec
from branchmerge.recipe.summaries import EvalSetSummary, ProblemsSummary
from branchmerge.records import Problem, read_jsonl, write_jsonl

TINYLAB_LEVELS = [1, 2, 3, 4]


def path_fingerprint(path: Path) -> str:
    """Hash of a data file's bytes, or of every file under a folder (names and bytes)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def _relabel(problems: list[Problem], relabel: dict[str, str]) -> list[Problem]:
    if not relabel:
        return problems
    return [p.model_copy(update={"domain": relabel.get(p.domain, p.domain)}) for p in problems]


def problems_stage(spec: ProblemsSpec, base_dir: Path, work: Path) -> ProblemsSummary:
    """train.jsonl (and, for tinylab, the held-out eval.jsonl drawn first, so training excludes its questions)."""
    evals: list[Problem] = []
    if spec.source == "tinylab":
        from branchmerge.tinylab.domains import generate_problems

        levels = tuple(spec.levels or TINYLAB_LEVELS)
        trains = []
        assert spec.train_per_domain is not None and spec.eval_per_domain is not None
        for d in spec.domains:
            ev = generate_problems(d, spec.eval_per_domain, spec.eval_seed, levels)
            evals += ev
            trains += generate_problems(
                d, spec.train_per_domain, spec.train_seed, levels, {p.question for p in ev}
            )
    elif spec.source == "mdr":
        trains = mdr_training_items(spec)
    else:
        trains = [p for i, f in enumerate(spec.files) for p in _read_file(f, base_dir, i)]
        if spec.domains:
            trains = [p for p in trains if p.domain in spec.domains]
        _unique(trains)
    trains, evals = _relabel(trains, spec.relabel), _relabel(evals, spec.relabel)
    if not trains:
        raise BranchmergeError("problems: no training problems (check problems.domains against the files)")
    write_jsonl(work / "train.jsonl", trains)
    write_jsonl(work / "eval.jsonl", evals)
    per_domain: dict[str, int] = {}
    for p in trains:
        per_domain[p.domain] = per_domain.get(p.domain, 0) + 1
    return ProblemsSummary(
        train=len(trains), eval=len(evals), domains=sorted(per_domain), per_domain=per_domain
    )


def mdr_training_items(spec: ProblemsSpec) -> list[Problem]:
    """Fresh items from the mdr generators, levels cycled; seeds start at `train_seed * 1_000_000`, far from the
    small seeds a `fresh_seed` eval set uses. The fixed benchmark items are never training data."""
    from branchmerge.evaluate.mdr import domain_names
    from branchmerge.evaluate.mdr.base import DOMAINS

    assert spec.train_per_domain is not None
    levels = spec.levels or list(range(1, 11))
    out = []
    for name in spec.domains or domain_names():
        seen: set[str] = set()
        i = 0
        while len(seen) < spec.train_per_domain:
            if i > 20 * spec.train_per_domain + 100:
                raise BranchmergeError(
                    f"problems: cannot make {spec.train_per_domain} distinct mdr '{name}' items"
                )
            p = DOMAINS[name].generate(levels[i % len(levels)], spec.train_seed * 1_000_000 + i)
            i += 1
            if p.question not in seen:
                seen.add(p.question)
                out.append(p)
    return out


def _read_file(f: ProblemFile, base_dir: Path, index: int) -> list[Problem]:
    from branchmerge.evaluate.loaders import load_set
    from branchmerge.recipe.resolve import data_path

    path = data_path(f.path, base_dir)
    try:
        if f.set == "problems":
            problems = read_jsonl(path, Problem)[: f.limit]
        else:
            problems = load_set(f.set, path, mapping=f.mapping, seed=f.seed, limit=f.limit, split=f.split)
    except BranchmergeError as e:
        raise BranchmergeError(f"problems.files[{index}]: {e}") from None
    if f.domain:
        problems = [p.model_copy(update={"domain": f.domain}) for p in problems]
    return problems


def _unique(problems: list[Problem]) -> None:
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise BranchmergeError(
                f"problems.files: the id '{p.id}' is in more than one file; ids must be unique"
            )
        seen.add(p.id)


def eval_set_stage(spec: EvalSetSpec, heldout: Path, base_dir: Path, work: Path) -> EvalSetSummary:
    """problems.jsonl of one eval set; a standard set's items take its label as their domain (a report column)."""
    from branchmerge.evaluate.loaders import load_set
    from branchmerge.evaluate.mdr import load_mdr
    from branchmerge.recipe.resolve import data_path

    label = spec.label or spec.name
    if spec.name == "heldout":
        problems = read_jsonl(heldout, Problem)
    elif spec.name == "mdr":
        problems = load_mdr(spec.domains, spec.fresh_seed, spec.levels)
    else:
        assert spec.path is not None
        problems = load_set(
            spec.name,
            data_path(spec.path, base_dir),
            mapping=spec.mapping,
            seed=spec.seed,
            limit=spec.limit,
            split=spec.split,
        )
        problems = [p.model_copy(update={"domain": label}) for p in problems]
    if spec.limit is not None:
        problems = problems[: spec.limit]
    if not problems:
        raise BranchmergeError(f"eval.sets: '{label}' has no items")
    write_jsonl(work / "problems.jsonl", problems)
    return EvalSetSummary(set=label, items=len(problems))
