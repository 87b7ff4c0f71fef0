"""report: a Markdown table per model × domain, a grouped bar chart, paired tests against a baseline, stage times."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from branchmerge.evaluate.stats import accuracy_table, item_scores, paired_test, wilson_interval
from branchmerge.records import EvalSample, atomic_write_text


def plot_accuracy(table: dict[str, dict[str, tuple[float, int]]], domains: Sequence[str], path: Path) -> None:
    """Grouped bars: domains on the x axis, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(table)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(domains) + 0.4 * len(models)), 4.2))
    for j, m in enumerate(models):
        xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(domains))]
        ys = [100 * table[m].get(d, (0.0, 0))[0] for d in domains]
        ax.bar(xs, ys, width=width, label=m)
    ax.set_xticks(range(len(domains)), list(domains))
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def render_report(
    samples: list[EvalSample],
    out_dir: str | Path,
    *,
    baseline: str,
    stage_times: Sequence[tuple[str, str, float]] = (),
    notes: Sequence[str] = (),
    title: str = "branchmerge report",
) -> Path:
    """Write `report.md` and `accuracy.png` into `out_dir`; returns the report path.

    stage_times: (stage, status, seconds) rows, status being "ran" or "reused".
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = accuracy_table(samples)
    domains = sorted({s.domain for s in samples})
    plot_accuracy(table, domains, out_dir / "accuracy.png")

    lines = [f"# {title}", ""]
    lines += ["## Accuracy (%) per domain", "", "| model | " + " | ".join([*domains, "all"]) + " |"]
    lines.append("|---" * (len(domains) + 2) + "|")
    for m, row in table.items():
        cells = [f"{100 * row[d][0]:.1f}" if d in row else "–" for d in [*domains, "all"]]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "![accuracy per domain](accuracy.png)", ""]

    lines += ["## Uncertainty and paired tests", ""]
    lines.append(
        f"95% Wilson interval of overall accuracy, and the mean per-item difference against `{baseline}` "
        "with the two-sided p-value of a paired sign-flip permutation test over the same items."
    )
    lines += ["", "| model | overall | 95% CI | Δ vs baseline (pts) | p |", "|---|---|---|---|---|"]
    by_model: dict[str, list[EvalSample]] = {}
    for s in samples:
        by_model.setdefault(s.model, []).append(s)
    base_scores = item_scores(by_model.get(baseline, []))
    for m, ss in by_model.items():
        passes, total = sum(s.passed for s in ss), len(ss)
        lo, hi = wilson_interval(passes, total)
        if m == baseline or not base_scores:
            delta, p = "–", "–"
        else:
            d, pv = paired_test(base_scores, item_scores(ss))
            delta, p = f"{100 * d:+.1f}", f"{pv:.3g}"
        lines.append(f"| {m} | {100 * passes / total:.1f} | {100 * lo:.1f}–{100 * hi:.1f} | {delta} | {p} |")

    if stage_times:
        lines += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
        lines += [f"| {name} | {status} | {secs:.1f} |" for name, status, secs in stage_times]
        lines.append(f"| **total** | | {sum(t for _, _, t in stage_times):.1f} |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
