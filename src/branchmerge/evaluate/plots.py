"""The report's figures: pass@1 bars with bootstrap error bars, pass@k curves, output length by level/difficulty.

Legends sit outside the axes (never over bars or lines) and figures are saved with a tight bounding box.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from branchmerge.evaluate.stats import ALL, Estimate, Lengths

_DPI = 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig: Any, path: Path) -> None:
    """Write through a temp file and a rename, so a reader never sees half a PNG."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=_DPI, bbox_inches="tight")
    _pyplot().close(fig)
    tmp.replace(path)


def _label_ticks(ax: Any, labels: Sequence[str]) -> None:
    """Category ticks; long or many labels are slanted so neighbours do not overlap."""
    longest = max((len(s) for s in labels), default=0)
    slant = longest > 10 or (len(labels) > 6 and longest > 3)
    ax.set_xticks(
        range(len(labels)), list(labels), rotation=30 if slant else 0, ha="right" if slant else "center"
    )


def plot_pass1(table: Mapping[str, Mapping[str, Estimate]], groups: Sequence[str], path: Path) -> None:
    """Grouped bars: groups (domains, then "all") on the x axis, one bar per model, 95% intervals as error bars."""
    plt = _pyplot()
    models = list(table)
    width = 0.8 / max(1, len(models))
    # about 0.3 inch per bar, within a page's width
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.3 * len(groups) * max(1, len(models)) + 1.5)), 4.5))
    for j, (m, color) in enumerate(zip(models, _colors(len(models)), strict=True)):
        xs, ys, err_lo, err_hi = [], [], [], []
        for i, g in enumerate(groups):
            e = table[m].get(g)
            if e is None:
                continue
            xs.append(i + (j - (len(models) - 1) / 2) * width)
            ys.append(100 * e.value)
            err_lo.append(100 * (e.value - e.lo))
            err_hi.append(100 * (e.hi - e.value))
        ax.bar(xs, ys, width=width, label=m, color=color)
        ax.errorbar(xs, ys, yerr=[err_lo, err_hi], fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    if ALL in groups and len(groups) > 1:  # set "all" apart from the domains
        ax.axvline(groups.index(ALL) - 0.5, color="grey", linewidth=0.8, linestyle=":")
    _label_ticks(ax, groups)
    ax.set_ylabel("pass@1 (%) with 95% CI")
    ax.set_ylim(0, 105)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _save(fig, path)


def _panel_grid(n: int) -> tuple[int, int]:
    """Rows and columns for n panels: at most 4 columns, close to square (4 panels make 2 × 2)."""
    cols = n if n <= 3 else min(4, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


def plot_pass_at_k(
    curves: Mapping[str, Mapping[str, Mapping[int, float]]], groups: Sequence[str], path: Path
) -> None:
    """One panel per group ("all" first), one line per model: mean unbiased pass@k against k."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    models = list(curves)
    colors = _colors(len(models))
    rows, cols = _panel_grid(len(groups))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols + 0.5, 2.9 * rows), squeeze=False, sharey=True)
    top_k = max((max(c, default=1) for gs in curves.values() for c in gs.values()), default=1)
    for ax, g in zip(axes.flat, groups, strict=False):
        for m, color in zip(models, colors, strict=True):
            curve = curves[m].get(g, {})
            if curve:
                ks = sorted(curve)
                marker = "o" if len(ks) <= 16 else None
                ax.plot(ks, [100 * curve[k] for k in ks], marker=marker, markersize=3, label=m, color=color)
        ax.set_title(g, fontsize=10)
        if top_k > 16:  # long curves: doubling k is the step that matters; ticks 1, 2, 4, … in plain numbers
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    for i, ax in enumerate(axes.flat[: len(groups)]):
        if i + cols >= len(groups):  # the lowest panel of its column
            ax.set_xlabel("k (samples)")
    for ax in axes[:, 0]:
        ax.set_ylabel("pass@k (%)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.97), frameon=False)
    fig.tight_layout()
    _save(fig, path)


def plot_lengths(panels: Mapping[str, Mapping[str, Mapping[str, Lengths]]], path: Path) -> None:
    """One panel per grouping (e.g. "level", "difficulty"): mean output tokens per group, one line per model.

    panels: grouping name -> model -> group -> Lengths, groups already in display order and without "all".
    """
    plt = _pyplot()
    names = list(panels)
    models = list(next(iter(panels.values()))) if panels else []
    colors = _colors(len(models))
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names) + 0.5, 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        table = panels[name]
        groups = list(dict.fromkeys(g for m in models for g in table.get(m, {})))
        for m, color in zip(models, colors, strict=True):
            row = table.get(m, {})
            xs = [i for i, g in enumerate(groups) if g in row]
            ys = [row[groups[i]].output for i in xs]
            style = "none" if name == "domain" else "-"  # domains have no order: points, not a line
            ax.plot(xs, ys, marker="o", markersize=4, linestyle=style, label=m, color=color)
        _label_ticks(ax, groups)
        ax.set_xlim(-0.5, len(groups) - 0.5)
        ax.set_xlabel(name)
        ax.set_ylabel("mean output tokens")
        top = max((v.output for row in table.values() for v in row.values()), default=0.0)
        ax.set_ylim(0, 1.1 * top or 1.0)  # headroom so the highest point is not cut by the frame
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False)
    fig.tight_layout()
    _save(fig, path)
