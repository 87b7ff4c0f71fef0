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

The targets (`targets`: thresholds KEEP_SHARE, MIXTURE_GAP, BASE_WIDTH) are judged from these numbers, never
assumed. The model descriptors and compute sums live in `claim_models.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from branchmerge.evaluate.claim_models import (
    Compute,
    Kind,
    ModelInfo,
    ancestors,
    check_models,
    total_compute,
)
from branchmerge.evaluate.stats import (
    ALL,
    Comparison,
    Estimate,
    compare,
    group_order,
    item_means,
    items_for_width,
    pass1_table,
    ratio_interval,
    split,
)
from branchmerge.records import EvalSample

KEEP_SHARE = 0.70  # a merge should keep at least this share of each expert's in-domain gain
MIXTURE_GAP = 0.03  # ... and trail the mixture by at most this much over all items (3 points)
BASE_WIDTH = 0.10  # the base's 95% interval on each domain should be at most this wide (10 points)


class _Boot(NamedTuple):
    resamples: int
    seed: int


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
    lo, hi = ratio_interval(b, e, m, resamples=boot.resamples, seed=boot.seed)
    return KeptGain(expert, d, gain_e, gain_m, gain_m / gain_e, lo, hi, len(shared))


def targets(claim: Claim) -> list[Target]:
    """The claim's targets, each judged from the numbers (a merge's three in one row per merge)."""
    out = []
    base = claim.base or "the base"
    experts = [
        n
        for n, m in claim.models.items()
        if m.kind == "expert" and n in claim.pass1 and m.domain in claim.domains  # not experts by teacher
    ]
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


def _pts_ci(c: Comparison) -> str:
    sig = (
        "not significant"
        if not c.significant
        else "significantly higher"
        if c.diff > 0
        else "significantly lower"
    )
    return (
        f"{100 * c.diff:+.1f} pts [{100 * c.lo:+.1f}, {100 * c.hi:+.1f}], p = {max(c.p, c.p_sign):.2g}, {sig}"
    )


__all__ = [
    "BASE_WIDTH",
    "KEEP_SHARE",
    "MIXTURE_GAP",
    "Claim",
    "Compute",
    "KeptGain",
    "Kind",
    "MergeClaim",
    "ModelInfo",
    "Target",
    "ancestors",
    "build_claim",
    "check_models",
    "merge_targets",
    "targets",
    "total_compute",
]
