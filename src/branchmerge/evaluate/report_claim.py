"""The report's "Branch-Merge claim" section: targets with computed marks, experts against the base, per merge
its kept gains, significance on every domain and gap to the mixture, and the compute of every model."""

from __future__ import annotations

from branchmerge.evaluate.claim import (
    KEEP_SHARE,
    MIXTURE_GAP,
    Claim,
    MergeClaim,
)
from branchmerge.evaluate.report_html import Block, Heading, Table, Text
from branchmerge.evaluate.stats import ALL, Comparison


def _mark(holds: bool | None) -> str:
    return "✓" if holds else "n/a" if holds is None else "✗"


def _pts(x: float | None) -> str:
    return "–" if x is None else f"{round(100 * x, 1) + 0.0:+.1f}"


def _cmp(c: Comparison | None) -> list[str]:
    if c is None:
        return ["–", "–", "–", "⚠ no shared items"]
    word = "**significantly higher**" if c.diff > 0 else "**significantly lower**"
    verdict = (word if c.significant else "⚠ not significant") + f" ({c.items} items)"
    return [_pts(c.diff), f"[{_pts(c.lo)}, {_pts(c.hi)}]", f"{max(c.p, c.p_sign):.2g}", verdict]


def _num(x: float | None, fmt: str) -> str:
    return "?" if x is None else format(x, fmt)


def claim_section(claim: Claim) -> list[Block]:
    base = claim.base
    blocks: list[Block] = [
        Heading("Branch-Merge claim"),
        Text(
            "Experts trained from one base on one domain each, then merged, should keep most of each expert's "
            "gain at a fraction of a data mixture's cost (TinyR1). Every mark below is computed from this run's "
            "samples. Significance: the paired test of the comparisons above (95% interval excludes 0 and both "
            "p < 0.05). Kept gain = (merge − base) / (expert − base) on the expert's own domain, on the items "
            "all three answered; it is n/a when the expert does not significantly beat the base there (a share "
            f"of a gain that may be noise means nothing). Targets: keep ≥ {KEEP_SHARE:.0%} of every expert's "
            f"gain; trail the mixture by ≤ {100 * MIXTURE_GAP:.0f} points over all items (point estimate)."
        ),
    ]
    if base is None:
        blocks.append(Text("⚠ No model of kind base was evaluated: kept gains and significance are n/a."))
    blocks.append(
        Table(
            ["target", "holds", "evidence"],
            [[t.statement, _mark(t.holds), t.evidence] for t in claim.targets],
        )
    )
    experts = [n for n, m in claim.models.items() if m.kind == "expert" and n in claim.pass1]
    if experts and base is not None:
        rows = []
        for e in experts:
            d = claim.models[e].domain or ""
            p1 = claim.pass1
            mine = f"{100 * p1[e][d].value:.1f}" if d in p1[e] else "–"
            theirs = f"{100 * p1[base][d].value:.1f}" if d in p1.get(base, {}) else "–"
            rows.append([f"`{e}`", d or "–", mine, theirs, *_cmp(claim.vs_base.get(e, {}).get(d))])
        blocks += [
            Heading("Experts against the base on their own domain", 3),
            Table(
                ["expert", "domain", "expert (%)", f"{base} (%)", "Δ (pts)", "95% CI", "p", "verdict"], rows
            ),
        ]
    for mc in claim.merges:
        blocks += _merge_blocks(mc, claim)
    blocks += _compute_blocks(claim)
    return blocks


def _merge_blocks(mc: MergeClaim, claim: Claim) -> list[Block]:
    blocks: list[Block] = [Heading(f"`{mc.name}`", 3)]
    if mc.kept:
        rows = []
        for k in mc.kept:
            share = "n/a" if k.share is None else f"{100 * k.share:.1f}%"
            ci = "–" if k.lo is None or k.hi is None else f"[{100 * k.lo:.0f}%, {100 * k.hi:.0f}%]"
            rows.append(
                [
                    f"`{k.expert}`",
                    k.domain,
                    _pts(k.expert_gain),
                    _pts(k.merge_gain),
                    share,
                    ci,
                    k.reason or "",
                ]
            )
        header = ["expert", "domain", "expert − base (pts)", "merge − base (pts)", "kept", "95% CI", "note"]
        blocks += [Text("Kept share of each expert's in-domain gain:"), Table(header, rows)]
    else:
        blocks.append(Text("No expert among its parents: no kept gain to report."))
    if claim.base is not None:
        rows = [[d, *_cmp(mc.vs_base.get(d))] for d in [*claim.domains, ALL]]
        blocks += [
            Text(f"Against `{claim.base}` (merge − base):"),
            Table(["domain", "Δ (pts)", "95% CI", "p", "verdict"], rows),
        ]
    for mx, by in mc.vs_mixture.items():
        rows = [[d, *_cmp(by.get(d))] for d in [*claim.domains, ALL]]
        blocks += [
            Text(f"Gap to the mixture `{mx}` (merge − mixture):"),
            Table(["domain", "Δ (pts)", "95% CI", "p", "verdict"], rows),
        ]
    return blocks


def _compute_blocks(claim: Claim) -> list[Block]:
    rows = []
    for name, m in claim.models.items():
        total = claim.compute[name]
        own = [_num(m.train_tokens, ",d"), _num(m.loss_tokens, ",d"), _num(m.wall_s, ".1f")]
        if m.kind == "base" and m.train_tokens is None:
            own = ["–", "–", "–"]  # trained before this run
        rows.append(
            [
                f"`{name}`",
                m.kind,
                ", ".join(m.parents) or "–",
                *own,
                _num(total.train_tokens, ",d"),
                _num(total.wall_s, ".1f"),
            ]
        )
    blocks: list[Block] = [
        Heading("Compute", 3),
        Text(
            "Own: this model's training run (tokens: non-padding tokens seen over all steps; loss tokens: those "
            "the loss was taken on) or, for a merge, the merge itself. Total: own plus every model it was made "
            "from, each once (a merge: its parents' training summed, plus the merging). The base's own training "
            "is not counted. ? = not recorded."
        ),
        Table(
            [
                "model",
                "kind",
                "made from",
                "train tokens",
                "loss tokens",
                "own wall (s)",
                "total train tokens",
                "total wall (s)",
            ],
            rows,
        ),
    ]
    trades = []
    for mc in claim.merges:
        mine = claim.compute[mc.name]
        for mx, by in mc.vs_mixture.items():
            theirs, gap = claim.compute[mx], by.get(ALL)
            if gap is None:
                continue
            tokens = (
                f"{mine.train_tokens / theirs.train_tokens:.2f}× the mixture's training tokens"
                if mine.train_tokens is not None and theirs.train_tokens
                else "training tokens not recorded"
            )
            wall = (
                f"{mine.wall_s / theirs.wall_s:.2f}× its wall time"
                if mine.wall_s is not None and theirs.wall_s
                else "wall time not recorded"
            )
            trades.append(
                f"`{mc.name}` against `{mx}`: {tokens}, {wall}, for {_pts(gap.diff)} pts over all items "
                f"(95% CI [{_pts(gap.lo)}, {_pts(gap.hi)}])."
            )
    if trades:
        blocks.append(Text("Cost against quality: " + " ".join(trades)))
    return blocks
