"""`results.json`: the evaluation and the Branch-Merge claim for machines (`branchmerge.evaluate.claim`).

    {"baseline": NAME,
     "models": {NAME: {"kind": "base|expert|mixture|merge|other", "domain": DOMAIN (experts), "parents": [...],
                       "train_tokens": N, "loss_tokens": N, "wall_s": S,      <- own + every ancestor's
                       "own": {"train_tokens", "loss_tokens", "wall_s"},        <- this model's run alone
                       "domains": {D: {"pass1": %, "ci95": [lo, hi], "items": N}}, "overall": {...},
                       "kept_gain": {EXPERT: {...}}, "vs_mixture": {MIXTURE: {D: {...}}}}},
     "paired": [{"model", "against", "domain", "delta", "ci95", "p", "significant", ...}],
     "targets": [{"statement", "holds", "evidence"}]}

Percentages and points are in percent (pass1 62.5 means 62.5%). `paired` holds every evaluated model against the
baseline per domain and over all items ("all"); `p` is the larger of the paired-bootstrap and sign-flip p-values,
the one the significance rule uses together with the interval. Unknown values are null.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from branchmerge.evaluate.claim import Claim, Compute, KeptGain, Kind
from branchmerge.evaluate.stats import ALL, Comparison, Estimate, compare
from branchmerge.records import EvalSample, atomic_write_text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Score(_Strict):
    pass1: float
    ci95: tuple[float, float]
    items: int


class Paired(_Strict):
    delta: float  # points
    ci95: tuple[float, float]
    p: float
    p_bootstrap: float
    p_sign_flip: float
    significant: bool
    items: int


class PairedRow(Paired):
    model: str
    against: str
    domain: str


class ComputeOut(_Strict):
    train_tokens: int | None
    loss_tokens: int | None
    wall_s: float | None


class KeptOut(_Strict):
    domain: str
    expert_gain: float | None  # points
    merge_gain: float | None
    share: float | None  # fraction of the expert's gain kept; null: n/a
    ci95: tuple[float, float] | None
    items: int
    reason: str | None  # why the share is n/a


class ModelOut(_Strict):
    kind: Kind
    domain: str | None
    parents: list[str]
    train_tokens: int | None
    loss_tokens: int | None
    wall_s: float | None
    own: ComputeOut
    domains: dict[str, Score]
    overall: Score | None
    kept_gain: dict[str, KeptOut] = Field(default_factory=dict)
    vs_mixture: dict[str, dict[str, Paired]] = Field(default_factory=dict)


class TargetOut(_Strict):
    statement: str
    holds: bool | None
    evidence: str


class Results(_Strict):
    baseline: str
    models: dict[str, ModelOut]
    paired: list[PairedRow]
    targets: list[TargetOut]


def _r(x: float) -> float:
    return round(100 * x, 4) + 0.0


def _score(e: Estimate) -> Score:
    return Score(pass1=_r(e.value), ci95=(_r(e.lo), _r(e.hi)), items=e.items)


def _paired(c: Comparison) -> Paired:
    return Paired(
        delta=_r(c.diff),
        ci95=(_r(c.lo), _r(c.hi)),
        p=max(c.p, c.p_sign),
        p_bootstrap=c.p,
        p_sign_flip=c.p_sign,
        significant=c.significant,
        items=c.items,
    )


def _compute(c: Compute) -> ComputeOut:
    return ComputeOut(train_tokens=c.train_tokens, loss_tokens=c.loss_tokens, wall_s=c.wall_s)


def _kept(k: KeptGain) -> KeptOut:
    return KeptOut(
        domain=k.domain,
        expert_gain=None if k.expert_gain is None else _r(k.expert_gain),
        merge_gain=None if k.merge_gain is None else _r(k.merge_gain),
        share=k.share,
        ci95=None if k.lo is None or k.hi is None else (k.lo, k.hi),
        items=k.items,
        reason=k.reason or None,
    )


def build_results(
    claim: Claim, samples: list[EvalSample], baseline: str, *, resamples: int = 2000, seed: int = 0
) -> Results:
    """The claim and the paired comparisons against `baseline` (reused from the claim when it is the base)."""
    models = {}
    merges = {mc.name: mc for mc in claim.merges}
    for name, m in claim.models.items():
        scores = claim.pass1.get(name, {})
        mc = merges.get(name)
        models[name] = ModelOut(
            kind=m.kind,
            domain=m.domain,
            parents=m.parents,
            **_compute(claim.compute[name]).model_dump(),
            own=ComputeOut(train_tokens=m.train_tokens, loss_tokens=m.loss_tokens, wall_s=m.wall_s),
            domains={d: _score(scores[d]) for d in claim.domains if d in scores},
            overall=_score(scores[ALL]) if ALL in scores else None,
            kept_gain={k.expert: _kept(k) for k in mc.kept} if mc else {},
            vs_mixture={
                mx: {d: _paired(c) for d, c in by.items()} for mx, by in (mc.vs_mixture if mc else {}).items()
            },
        )
    paired = []
    evaluated = [n for n in claim.models if n in claim.pass1]
    if baseline in claim.pass1:
        for name in evaluated:
            if name == baseline:
                continue
            by = (
                claim.vs_base[name]
                if baseline == claim.base
                else compare(samples, name, baseline, resamples=resamples, seed=seed)
            )
            paired += [
                PairedRow(model=name, against=baseline, domain=d, **_paired(c).model_dump())
                for d, c in by.items()
            ]
    return Results(
        baseline=baseline,
        models=models,
        paired=paired,
        targets=[TargetOut(statement=t.statement, holds=t.holds, evidence=t.evidence) for t in claim.targets],
    )


def write_results(results: Results, path: str | Path) -> Path:
    """Atomically: a reader never sees half a file."""
    path = Path(path)
    atomic_write_text(path, results.model_dump_json(indent=2) + "\n")
    return path


def read_results(path: str | Path) -> Results:
    """Read and validate a results.json (a ValueError naming the file and field when it does not fit)."""
    from pydantic import ValidationError

    try:
        return Results.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ValueError(f"{path}: {where}: {err['msg']}") from None
