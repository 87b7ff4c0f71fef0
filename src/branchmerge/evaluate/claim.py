"""The Branch-Merge claim in numbers: experts branched from one base and merged keep most of each expert's gain,
at a fraction of a data mixture's cost (TinyR1, arXiv 2503.04872, sections 2–3).

Per merge, from the evaluation samples and a descriptor of every model (`ModelInfo`):

- kept gain, per expert among the merge's ancestors, on that expert's own domain D:

      share = (merge − base) / (expert − base)        both paired differences on the items the three share

  It is defined only when the expert significantly beats the base on D (the paired test of `stats.paired`:
  interval above 0 and both p < 0.05); otherwise it is n/a, since a ratio over a gain that is noise, zero or
  negative says nothing. Its 95% interval is a percentile bootstrap of the ratio, items resampled jointly.
- the gap to the mixture: merge − mixture, per domain and over all items, with its paired interval.
- significance against the base on every domain (paired).
- compute: tokens trained and wall time of each model plus everything it was made from (a merge: its parents'
  summed, plus the merge itself), so merge against mixture reads as a measured cost/quality trade.

Targets (`TARGETS`) are evaluated from these numbers, never assumed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from branchmerge.evaluate.stats import (
    ALL,
    Comparison,
    Estimate,
    compare,
    group_order,
    item_means,
    pass1_table,
    split,
)
from branchmerge.records import EvalSample

Kind = Literal["base", "expert", "mixture", "merge", "other"]
KEEP_SHARE = 0.70  # a merge should keep at least this share of each expert's in-domain gain
MIXTURE_GAP = 0.03  # ... and trail the mixture by at most this much over all items (3 points)
BASE_WIDTH = 0.10  # the base's 95% interval on each domain should be at most this wide (10 points)


class ModelInfo(BaseModel):
    """What the claim needs to know about a model besides its samples. Compute is the model's own (its training
    run, or the merge itself); `parents` are the models it was made from (an expert: the base)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Kind
    domain: str | None = None  # an expert's own domain
    parents: list[str] = Field(default_factory=list)
    train_tokens: int | None = Field(None, ge=0)  # non-padding tokens seen over all steps; None: not recorded
    loss_tokens: int | None = Field(None, ge=0)  # tokens the loss was taken on
    wall_s: float | None = Field(None, ge=0)


class _Boot(NamedTuple):
    resamples: int
    seed: int


@dataclass(frozen=True)
class Compute:
    """A model's own compute plus that of every model it was made from (each counted once); None: unknown."""

    train_tokens: int | None
    loss_tokens: int | None
    wall_s: float | None


@dataclass(frozen=True)
class KeptGain:
    expert: str
    domain: str
    expert_gain: float | None  # expert − base on the shared items (None: no shared items)
    merge_gain: float | None
    share: float | None  # None: n/a, `reason` says why
    lo: float | None = None
    hi: float | None = None
    items: int = 0
    reason: str = ""


@dataclass(frozen=True)
class MergeClaim:
    name: str
    experts: list[str]  # the experts among its ancestors
    kept: list[KeptGain]
    vs_base: dict[str, Comparison]  # domain (and "all") -> merge − base
    vs_mixture: dict[str, dict[str, Comparison]]  # mixture -> domain (and "all") -> merge − mixture


@dataclass(frozen=True)
class Target:
    statement: str
    holds: bool | None  # None: cannot be judged here, `evidence` says why
    evidence: str


@dataclass
class Claim:
    base: str | None
    domains: list[str]
    models: dict[str, ModelInfo]
    pass1: dict[str, dict[str, Estimate]]  # evaluated model -> domain (and "all")
    compute: dict[str, Compute]
    vs_base: dict[str, dict[str, Comparison]]  # evaluated model -> domain (and "all") -> model − base
    merges: list[MergeClaim] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)


def check_models(models: Sequence[ModelInfo]) -> dict[str, ModelInfo]:
    """name -> descriptor; every problem (duplicate names, unknown parents, cycles, two bases) in one error."""
    by_name: dict[str, ModelInfo] = {}
    errors = []
    for m in models:
        if m.name in by_name:
            errors.append(f"models: '{m.name}' is described twice")
        by_name[m.name] = m
    for m in models:
        errors += [
            f"models: {m.name}.parents: '{p}' is not a described model (known: {', '.join(sorted(by_name))})"
            for p in m.parents
            if p not in by_name
        ]
        if m.kind == "merge" and not m.parents:
            errors.append(f"models: {m.name}.parents: a merge needs the models it was made from")
    bases = [m.name for m in models if m.kind == "base"]
    if len(bases) > 1:
        errors.append(f"models: more than one model of kind base ({', '.join(bases)})")
    if not errors:
        for m in models:
            if m.name in ancestors(m.name, by_name):
                errors.append(f"models: {m.name}.parents: '{m.name}' is its own ancestor")
    if errors:
        raise ValueError("\n".join(errors))
    return by_name


def ancestors(name: str, models: dict[str, ModelInfo]) -> list[str]:
    """Every model `name` was made from, directly or through others, each once, nearest first."""
    out: list[str] = []
    todo = list(models[name].parents)
    while todo:
        p = todo.pop(0)
        if p not in out:
            out.append(p)
            if p != name:
                todo += models[p].parents
    return out


def total_compute(name: str, models: dict[str, ModelInfo]) -> Compute:
    """Own compute plus every ancestor's; a base (trained before this run) counts 0 unless its descriptor says."""

    def total(values: list[float | int | None]) -> float | None:
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    chain = [models[name], *(models[a] for a in ancestors(name, models))]
    own = [m for m in chain if m.kind != "base"]
    tokens = total([m.train_tokens if m.kind != "merge" else 0 for m in own])
    loss = total([m.loss_tokens if m.kind != "merge" else 0 for m in own])
    wall = total([m.wall_s for m in own])
    return Compute(None if tokens is None else int(tokens), None if loss is None else int(loss), wall)


def build_claim(
    samples: Iterable[EvalSample],
    models: Sequence[ModelInfo],
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> Claim:
    """Kept gains, gaps to the mixture, significance against the base, compute and the targets.

    Models in the samples without a descriptor count as kind "other"; described models without samples (an
    intermediate merge that was not evaluated) take part only through compute and ancestry.
    """
    samples = list(samples)
    described = check_models(models)
    evaluated = list(dict.fromkeys(s.model for s in samples))
    for name in evaluated:
        described.setdefault(name, ModelInfo(name=name, kind="other"))
    base = next((m.name for m in described.values() if m.kind == "base" and m.name in evaluated), None)
    boot = _Boot(resamples, seed)
    claim = Claim(
        base=base,
        domains=[g for g in group_order({s.domain for s in samples}) if g != ALL],
        models=described,
        pass1=pass1_table(samples, by="domain", resamples=resamples, seed=seed),
        compute={n: total_compute(n, described) for n in described},
        vs_base={},
    )
    if base is not None:
        claim.vs_base = {
            m: compare(samples, m, base, resamples=resamples, seed=seed) for m in evaluated if m != base
        }
    mixtures = [n for n in evaluated if described[n].kind == "mixture"]
    by_item = split(samples, "domain")
    for name in evaluated:
        if described[name].kind != "merge":
            continue
        experts = [a for a in ancestors(name, described) if described[a].kind == "expert"]
        kept = [_kept(name, e, described[e].domain, base, by_item, claim, boot) for e in experts]
        gaps = {mx: compare(samples, name, mx, resamples=resamples, seed=seed) for mx in mixtures}
        claim.merges.append(MergeClaim(name, experts, kept, claim.vs_base.get(name, {}), gaps))
    claim.targets = targets(claim)
    return claim


def _kept(
    merge: str,
    expert: str,
    domain: str | None,
    base: str | None,
    by_item: dict[str, dict[str, list[EvalSample]]],
    claim: Claim,
    boot: _Boot,
) -> KeptGain:
    d = domain or "?"
    if base is None:
        return KeptGain(expert, d, None, None, None, reason="no base model was evaluated")
    if expert not in by_item or domain is None or domain not in claim.domains:
        return KeptGain(expert, d, None, None, None, reason=f"{expert} has no evaluated own domain")
    means = [item_means(by_item[m].get(domain, [])) for m in (base, expert, merge)]
    shared = sorted(set.intersection(*(set(m) for m in means)))
    if not shared:
        return KeptGain(expert, d, None, None, None, reason="no items answered by base, expert and merge")
    b, e, m = (np.array([x[k] for k in shared]) for x in means)
    gain_e, gain_m = float((e - b).mean()), float((m - b).mean())
    test = claim.vs_base[expert].get(domain)
    if test is None or not (test.significant and test.diff > 0):
        why = f"{expert} does not significantly beat {base} on {domain}"
        return KeptGain(expert, d, gain_e, gain_m, None, items=len(shared), reason=why)
    lo, hi = share_interval(b, e, m, resamples=boot.resamples, seed=boot.seed)
    return KeptGain(expert, d, gain_e, gain_m, gain_m / gain_e, lo, hi, len(shared))


def share_interval(
    base: np.ndarray, expert: np.ndarray, merge: np.ndarray, *, resamples: int = 2000, seed: int = 0
) -> tuple[float | None, float | None]:
    """95% percentile-bootstrap interval of mean(merge − base) / mean(expert − base), resampling items jointly.

    A resample where the expert does not gain (denominator ≤ 0) has no ratio. Past 2.5% of such resamples the
    interval is unbounded and (None, None) is returned; the share itself is only reported when the expert's gain
    is significant, which keeps that rare.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, base.size, size=(resamples, base.size))
    num = (merge - base)[idx].mean(axis=1)
    den = (expert - base)[idx].mean(axis=1)
    ok = den > 0
    if ok.mean() < 0.975:
        return None, None
    lo, hi = np.quantile(num[ok] / den[ok], [0.025, 0.975])
    return float(lo), float(hi)


def targets(claim: Claim) -> list[Target]:
    """The claim's targets, each judged from the numbers (a merge's three in one row per merge)."""
    out = []
    base = claim.base or "the base"
    experts = [n for n, m in claim.models.items() if m.kind == "expert" and n in claim.pass1]
    rows = []
    for e in experts:
        d = claim.models[e].domain
        c = claim.vs_base.get(e, {}).get(d or "")
        ok = c is not None and c.significant and c.diff > 0
        rows.append((ok, f"{e} on {d}: " + ("no shared items" if c is None else _pts_ci(c))))
    out.append(
        Target(
            f"each expert significantly beats {base} on its own domain",
            None if not rows or claim.base is None else all(ok for ok, _ in rows),
            "; ".join(text for _, text in rows) or "no expert with an evaluated own domain",
        )
    )
    out.append(_base_width(claim))
    for mc in claim.merges:
        out += merge_targets(mc, claim)
    judged = [mc.name for mc in claim.merges if all(t.holds for t in merge_targets(mc, claim))]
    out.append(
        Target(
            "at least one merge meets all three merge targets",
            bool(judged) if claim.merges else None,
            ", ".join(judged) if judged else "none" if claim.merges else "no merge was evaluated",
        )
    )
    return out


def merge_targets(mc: MergeClaim, claim: Claim) -> list[Target]:
    base = claim.base or "the base"
    per_domain = [(d, mc.vs_base.get(d)) for d in claim.domains]
    beats = [c is not None and c.significant and c.diff > 0 for _, c in per_domain]
    out = [
        Target(
            f"{mc.name} significantly beats {base} on every domain",
            all(beats) if claim.base is not None and per_domain else None,
            "; ".join(f"{d}: {_pts_ci(c) if c else 'no shared items'}" for d, c in per_domain),
        )
    ]
    kept = [k for k in mc.kept]
    undefined = [k for k in kept if k.share is None]
    out.append(
        Target(
            f"{mc.name} keeps ≥ {KEEP_SHARE:.0%} of each expert's in-domain gain",
            None
            if not kept or undefined
            else all(k.share is not None and k.share >= KEEP_SHARE for k in kept),
            "; ".join(
                f"{k.expert} on {k.domain}: "
                + (f"{100 * k.share:.1f}%" if k.share is not None else f"n/a ({k.reason})")
                for k in kept
            )
            or "no expert among its parents",
        )
    )
    gaps = [(mx, by.get(ALL)) for mx, by in mc.vs_mixture.items()]
    known = [(mx, c) for mx, c in gaps if c is not None]
    out.append(
        Target(
            f"{mc.name} trails the mixture by ≤ {100 * MIXTURE_GAP:.0f} points over all items (or beats it)",
            all(c.diff >= -MIXTURE_GAP for _, c in known) if known else None,
            "; ".join(f"vs {mx}: {_pts_ci(c)}" for mx, c in known) or "no mixture was evaluated",
        )
    )
    return out


def _base_width(claim: Claim) -> Target:
    if claim.base is None:
        return Target(f"the base's 95% interval is ≤ {100 * BASE_WIDTH:.0f} points wide", None, "no base")
    est = claim.pass1[claim.base]
    widths = {d: est[d].hi - est[d].lo for d in claim.domains if d in est}
    return Target(
        f"{claim.base}'s 95% interval is ≤ {100 * BASE_WIDTH:.0f} points wide on every domain",
        all(w <= BASE_WIDTH + 1e-12 for w in widths.values()) if widths else None,
        "; ".join(
            f"{d}: {100 * w:.1f} pts over {est[d].items} items"
            + (
                ""
                if w <= BASE_WIDTH + 1e-12
                else f" (about {items_for_width(est[d].value, BASE_WIDTH)} items would give {100 * BASE_WIDTH:.0f})"
            )
            for d, w in widths.items()
        ),
    )


def items_for_width(p: float, width: float, z: float = 1.96) -> int:
    """Items for a 95% interval `width` wide around a pass rate p, one sample per item (normal approximation
    of the binomial: width = 2z·sqrt(p(1−p)/n)); p is clipped to [0.05, 0.95] so a rate at 0 or 1 still asks
    for a sensible number. A planning figure, not a guarantee: samples per item and the bootstrap change it."""
    q = min(0.95, max(0.05, p))
    return math.ceil((2 * z) ** 2 * q * (1 - q) / width**2)


def _pts_ci(c: Comparison) -> str:
    sig = "significant" if c.significant else "not significant"
    return (
        f"{100 * c.diff:+.1f} pts [{100 * c.lo:+.1f}, {100 * c.hi:+.1f}], p = {max(c.p, c.p_sign):.2g}, {sig}"
    )
