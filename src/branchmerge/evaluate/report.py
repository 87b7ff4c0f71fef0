"""report: what a reader needs to tell signal from noise in an evaluation, as report.md and report.html.

Sections: pass@1 per model × domain with bootstrap intervals (and the grouped bar chart `accuracy.png`), paired
comparisons against a baseline (every "A beats B in D" with its interval, flagged when not significant), merge
synergy (domains where a merge beats all of its parents), pass@k curves, output length by domain, level and
difficulty, then stage times and notes. Given a descriptor of every model (`claim_models.ModelInfo`), a "Branch-Merge
claim" section (kept gains, gaps to the mixture, compute, targets; `report_claim.py`) follows the paired
comparisons and `results.json` is written beside the report (`results.py`). The numbers come from `stats/`, the
figures from `plots.py`, the rendering from `report_html.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from branchmerge.evaluate import plots
from branchmerge.evaluate.claim import build_claim
from branchmerge.evaluate.claim_models import ModelInfo
from branchmerge.evaluate.report_claim import claim_section
from branchmerge.evaluate.report_html import (
    Block,
    Bullets,
    Figure,
    Heading,
    Table,
    Text,
    to_html,
    to_markdown,
)
from branchmerge.evaluate.results import build_results, write_results
from branchmerge.evaluate.stats import (
    ALL,
    NONE,
    Comparison,
    compare,
    group_order,
    item_outcomes,
    length_table,
    merge_synergy,
    pass1_table,
    pass_at_k_curves,
    split,
)
from branchmerge.records import EvalSample, Problem, atomic_write_text


class _Boot(NamedTuple):
    resamples: int
    seed: int


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _pts(x: float) -> str:
    return f"{round(100 * x, 1) + 0.0:+.1f}"  # + 0.0 turns -0.0 into 0.0


def _ci(c: Comparison) -> str:
    return f"[{_pts(c.lo)}, {_pts(c.hi)}]"


def _p(p: float) -> str:
    return f"{p:.2g}"


def render_report(
    samples: list[EvalSample],
    out_dir: str | Path,
    *,
    baseline: str,
    stage_times: Sequence[tuple[str, str, float]] = (),
    notes: Sequence[str] = (),
    title: str = "branchmerge report",
    merges: Mapping[str, Sequence[str]] | None = None,
    problems: Iterable[Problem] | None = None,
    max_k: int | None = None,
    html: bool = True,
    resamples: int = 2000,
    seed: int = 0,
    models: Sequence[ModelInfo] | None = None,
) -> Path:
    """Write `report.md`, `accuracy.png` (and `report.html`, `pass_at_k.png`, `lengths.png`) into `out_dir`;
    returns the path of report.md.

    stage_times: (stage, status, seconds) rows, status being "ran" or "reused".
    merges: merged model -> its parents, for the merge-synergy section.
    problems: the evaluated problems; their `difficulty` groups the output-length tables.
    max_k: the largest k of the pass@k curves (default: the smallest number of samples of any item).
    resamples, seed: of every bootstrap (items are resampled; results are reproducible for a given seed).
    models: what each model is (base, expert of a domain, mixture, merge of parents) and its training compute;
        given, the report states the Branch-Merge claim and `results.json` is written too.
    """
    if not samples:
        raise ValueError("render_report: no samples to report on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(s.model for s in samples))
    for merged, parents in (merges or {}).items():
        unknown = [m for m in [merged, *parents] if m not in names]
        if unknown:
            raise ValueError(
                f"merges: {', '.join(unknown)} not a model in the samples (known: {', '.join(names)})"
            )
    difficulty = {p.id: p.difficulty for p in problems or ()}
    boot = _Boot(resamples, seed)
    claim = None if models is None else build_claim(samples, models, resamples=resamples, seed=seed)

    blocks: list[Block] = [Heading(title, 1)]
    blocks += _pass1_section(samples, out_dir, boot)
    blocks += _paired_section(samples, names, baseline, boot)
    if claim is not None:
        blocks += claim_section(claim)
    if merges:
        blocks += [
            Heading("Merge synergy"),
            Text(
                "Per merged model, only the domains where it has a higher pass@1 than every parent, on the items "
                "all of them answered; Δ = merge − parent with its paired 95% interval, and p = the larger of "
                "the bootstrap and sign-flip p-values. Rows not significant against every parent are flagged ⚠."
            ),
        ]
    for merged, parents in (merges or {}).items():
        blocks += _synergy_section(samples, merged, list(parents), boot)
    blocks += _pass_at_k_section(samples, out_dir, max_k)
    blocks += _length_section(samples, out_dir, difficulty)
    if stage_times:
        rows = [[name, status, f"{secs:.1f}"] for name, status, secs in stage_times]
        rows.append(["**total**", "", f"{sum(t for _, _, t in stage_times):.1f}"])
        blocks += [Heading("Stages"), Table(["stage", "status", "seconds"], rows)]
    if notes:
        blocks += [Heading("Notes"), Bullets(list(notes))]

    path = out_dir / "report.md"
    if claim is not None:
        results = build_results(claim, samples, baseline, resamples=resamples, seed=seed)
        write_results(results, out_dir / "results.json")
    atomic_write_text(path, to_markdown(blocks))
    if html:
        atomic_write_text(out_dir / "report.html", to_html(blocks, title, out_dir))
    return path


def _pass1_section(samples: list[EvalSample], out_dir: Path, boot: _Boot) -> list[Block]:
    table = pass1_table(samples, by="domain", resamples=boot.resamples, seed=boot.seed)
    groups = [*group_order({s.domain for s in samples}), ALL]
    plots.plot_pass1(table, groups, out_dir / "accuracy.png")
    per_model = split(samples, None)
    ns = sorted({len(v) for gs in per_model.values() for v in item_outcomes(gs[ALL]).values()})
    per_item = f"{ns[0]} sample{'s' * (ns[0] > 1)}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]} samples"
    header = ["model", *groups]
    return [
        Heading("pass@1 (%) per domain"),
        Text(
            f"pass@1: the mean pass over an item's samples ({per_item} per item), then the mean over items."
        ),
        Table(
            header,
            [[m, *(_pct(row[g].value) if g in row else "–" for g in groups)] for m, row in table.items()],
        ),
        Text(
            f"95% intervals (%): percentile bootstrap over items ({boot.resamples} resamples, seed "
            f"{boot.seed}); an item is resampled with all of its samples, which are correlated."
        ),
        Table(
            header,
            [
                [m, *(f"{_pct(row[g].lo)}–{_pct(row[g].hi)}" if g in row else "–" for g in groups)]
                for m, row in table.items()
            ],
        ),
        Figure("accuracy.png", "pass@1 per domain with 95% intervals"),
    ]


def _verdict(c: Comparison, other: str) -> str:
    if not c.significant:
        return "⚠ not significant"
    return f"**beats** {other}" if c.diff > 0 else f"**trails** {other}"


def _paired_section(samples: list[EvalSample], models: list[str], baseline: str, boot: _Boot) -> list[Block]:
    blocks: list[Block] = [Heading(f"Paired comparisons against `{baseline}`")]
    if baseline not in models:
        return [*blocks, Text(f"`{baseline}` has no samples here: no paired comparisons.")]
    blocks.append(
        Text(
            f"Δ = model − `{baseline}` in pass@1 points, on the items both answered (the items column). 95% "
            "interval: paired bootstrap over items; p: two-sided, paired bootstrap, then an exact sign-flip "
            "permutation test. A difference counts as significant only when the interval excludes 0 and both "
            "p < 0.05; every other row is flagged ⚠."
        )
    )
    rows, claims, left_out = [], [], 0
    for m in models:
        if m == baseline:
            continue
        for g, c in compare(
            samples, m, baseline, by="domain", resamples=boot.resamples, seed=boot.seed
        ).items():
            rows.append(
                [m, g, _pts(c.diff), _ci(c), _p(c.p), _p(c.p_sign), str(c.items), _verdict(c, baseline)]
            )
            left_out = max(left_out, c.left_out)
            if c.significant:
                word = "beats" if c.diff > 0 else "trails"
                claims.append(
                    f"`{m}` {word} `{baseline}` in {g} by {abs(100 * c.diff):.1f} pts "
                    f"(95% CI {_ci(c)}, p = {_p(max(c.p, c.p_sign))}, {c.items} items)"
                )
    header = ["model", "domain", "Δ (pts)", "95% CI", "p (bootstrap)", "p (sign-flip)", "items", "verdict"]
    blocks.append(Table(header, rows))
    if left_out:
        blocks.append(Text(f"⚠ Up to {left_out} items were answered by only one of a pair and are left out."))
    blocks.append(
        Text("Significant at 95%:" if claims else "No difference from the baseline is significant at 95%.")
    )
    if claims:
        blocks.append(Bullets(claims))
    return blocks


def _synergy_section(samples: list[EvalSample], merged: str, parents: list[str], boot: _Boot) -> list[Block]:
    named = ", ".join(f"`{p}`" for p in parents)
    blocks: list[Block] = [Heading(f"`{merged}` against its parents {named}", 3)]
    rows = merge_synergy(samples, merged, parents, by="domain", resamples=boot.resamples, seed=boot.seed)
    if not rows:
        return [*blocks, Text(f"No domain where `{merged}` beats every parent.")]
    header = ["domain", "items", f"{merged} (%)", *(f"{p} (%)" for p in parents)]
    header += [f"Δ vs {p} (pts) [95% CI] p" for p in parents] + ["verdict"]
    table = []
    for r in rows:
        cells = [r.group, str(r.items), _pct(r.merged), *(_pct(r.parents[p]) for p in parents)]
        cells += [
            f"{_pts(r.vs[p].diff)} {_ci(r.vs[p])} p={_p(max(r.vs[p].p, r.vs[p].p_sign))}" for p in parents
        ]
        weak = [p for p in parents if not r.vs[p].significant]
        cells.append("synergy, significant" if not weak else "⚠ not significant vs " + ", ".join(weak))
        table.append(cells)
    return [*blocks, Table(header, table)]


def _pass_at_k_section(samples: list[EvalSample], out_dir: Path, max_k: int | None) -> list[Block]:
    curves = pass_at_k_curves(samples, by="domain", max_k=max_k)
    top = max((max(gs[ALL], default=1) for gs in curves.values()), default=1)
    blocks: list[Block] = [Heading("pass@k")]
    if top < 2:
        why = "max_k is 1" if max_k == 1 else "some item has only one sample"
        return [*blocks, Text(f"No pass@k curves: {why}. Evaluate with n > 1 samples per item for them.")]
    ks = sorted({1, top, *(2**i for i in range(top.bit_length()) if 2**i <= top)})
    blocks.append(
        Text(
            "Unbiased pass@k (Chen et al. 2021): 1 − C(n−c, k)/C(n, k) per item with its own n samples and c "
            "passes, averaged over items (%)."
        )
    )
    rows = [[m, *(_pct(gs[ALL][k]) if k in gs[ALL] else "–" for k in ks)] for m, gs in curves.items()]
    blocks.append(Table(["model", *(f"k={k}" for k in ks)], rows))
    domains = group_order({s.domain for s in samples})
    plots.plot_pass_at_k(curves, [ALL, *domains] if len(domains) > 1 else [ALL], out_dir / "pass_at_k.png")
    return [*blocks, Figure("pass_at_k.png", "pass@k against k per domain")]


def _length_section(
    samples: list[EvalSample], out_dir: Path, difficulty: Mapping[str, str | None]
) -> list[Block]:
    blocks: list[Block] = [
        Heading("Output length"),
        Text(
            "Mean output tokens / mean reasoning tokens per sample; truncated: the share of samples that hit the "
            "token limit (no final answer)."
        ),
    ]
    panels = {}
    for by in ("domain", "level", "difficulty"):
        table = length_table(samples, by=by, difficulty=difficulty)
        groups = [g for g in group_order({g for row in table.values() for g in row}) if g != ALL]
        if by != "domain" and groups in ([], [NONE]):
            continue  # no sample has a level (or a difficulty): nothing to show
        header = ["model", *(f"{by} {g}" if by != "domain" else g for g in groups), "all", "truncated"]
        rows = [
            [
                m,
                *(
                    f"{row[g].output:.0f} / {row[g].reasoning:.0f}" if g in row else "–"
                    for g in [*groups, ALL]
                ),
            ]
            + [f"{100 * row[ALL].truncated:.0f}%"]
            for m, row in table.items()
        ]
        blocks += [Text(f"By {by}:"), Table(header, rows)]
        panels[by] = {m: {g: row[g] for g in groups if g in row} for m, row in table.items()}
    if len(panels) > 1:
        del panels["domain"]  # the figure shows length against level and difficulty when they are known
    plots.plot_lengths(panels, out_dir / "lengths.png")
    return [*blocks, Figure("lengths.png", "mean output tokens against " + " and ".join(panels))]
