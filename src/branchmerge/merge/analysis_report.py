"""What `branchmerge analyze` writes from an `AnalysisResult`: the per-layer table, analysis.csv, summary.md and
heatmap.png (the numbers themselves are computed in `merge.analyze`).

`analyze_task_vectors` calls `write_analysis`, so this module imports `merge.analyze` for type hints only and
reaches `Sums` through its methods (`methodcaller`), never at runtime: no import cycle.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from itertools import combinations
from operator import methodcaller
from pathlib import Path
from typing import TYPE_CHECKING

from branchmerge.records import atomic_write_text

if TYPE_CHECKING:
    from branchmerge.merge.analyze import AnalysisResult, Sums

# heatmap columns in the order a token meets them
KIND_ORDER: tuple[str, ...] = ("input_layernorm", "q_proj", "k_proj", "v_proj", "q_norm", "k_norm", "o_proj")
KIND_ORDER += ("post_attention_layernorm", "gate_proj", "up_proj", "down_proj")


def _fmt(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.4g}"


def layer_table(result: AnalysisResult, detailed: bool = True) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: one per layer, `other` (tensors outside the layers), `model`.

    detailed: one column per expert and per pair; otherwise means over experts and pairs.
    """
    labels, pairs = result.labels, list(combinations(range(len(result.experts)), 2))
    top = f"top-{100 * result.top_fraction:g}% share"
    cols: list[tuple[str, Callable[[Sums], float]]]  # header, a Sums method with its arguments
    if detailed:
        cols = [(f"‖δ‖/‖θ‖ {a}", methodcaller("rel_norm", t)) for t, a in enumerate(labels)]
        cols += [(f"cos {labels[i]}~{labels[j]}", methodcaller("cosine", i, j)) for i, j in pairs]
        cols += [("sign conflict", methodcaller("sign_conflict"))] if pairs else []
        cols += [(f"{top} {a}", methodcaller("top_share", t)) for t, a in enumerate(labels)]
    else:
        cols = [("‖δ‖/‖θ‖", methodcaller("mean_rel_norm"))]
        if pairs:
            cols += [
                ("mean cos", methodcaller("mean_cosine")),
                ("sign conflict", methodcaller("sign_conflict")),
            ]
        cols.append((top, methodcaller("mean_top_share")))
    named = [*((str(i), s) for i, s in result.layers.items()), ("model", result.total)]
    if outside := result.group(lambda r: "other" if r.layer is None else None):
        named.insert(-1, ("other", outside["other"]))
    rows = [[n, *(_fmt(fn(s)) for _, fn in cols)] for n, s in named]
    return ["layer", *(h for h, _ in cols)], rows


def _csv(result: AnalysisResult) -> str:
    labels, pairs = result.labels, list(combinations(range(len(result.experts)), 2))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["name", "layer", "kind", "shape", "numel", "base_norm"]
    header += [f"{c}[{a}]" for a in labels for c in ("norm", "rel_norm", "top_share")]
    header += [f"cos[{labels[i]}|{labels[j]}]" for i, j in pairs]
    w.writerow([*header, "sign_overlap", "sign_conflicts", "sign_conflict_rate"])
    for r in result.tensors:
        s, layer = r.sums, "" if r.layer is None else r.layer
        row: list[object] = [
            r.name,
            layer,
            r.kind,
            "x".join(map(str, r.shape)),
            s.numel,
            math.sqrt(s.base_sq),
        ]
        row += [v for t in range(len(labels)) for v in (s.norm(t), s.rel_norm(t), s.top_share(t))]
        w.writerow([*row, *(s.cosine(i, j) for i, j in pairs), s.overlap, s.conflict, s.sign_conflict()])
    return buf.getvalue()


def _summary(result: AnalysisResult) -> str:
    lines = ["# Task-vector analysis", "", f"- base: `{result.base}`"]
    lines += [f"- expert `{a}`: `{p}`" for a, p in zip(result.labels, result.experts, strict=True)]
    lines += [
        f"- {len(result.tensors)} tensors, {result.total.numel} parameters; top-share k = ⌈{result.top_fraction:g}"
        f" · numel⌉ per tensor; sign conflicts after TIES trim to density {result.density:g}",
        f"- skipped (not float): {', '.join(result.skipped) or 'none'}",
        "",
        "## Per layer (`other`: embeddings, final norm, lm_head; `model`: every tensor)",
        "",
    ]
    headers, rows = layer_table(result)
    lines += ["| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    total = result.total
    lines += ["", "## Whole model", ""]
    lines += [f"- ‖δ‖ {a}: {_fmt(total.norm(t))}" for t, a in enumerate(result.labels)]
    lines += [f"- sign conflict: {total.conflict} of {total.overlap} overlapping coordinates"]
    return "\n".join(lines) + "\n"


def plot_heatmap(result: AnalysisResult, path: Path) -> None:
    """Layers × tensor kinds: mean pairwise cosine and sign conflict (two or more experts), relative norm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cells = result.cells()
    layers = sorted({layer for layer, _ in cells})
    kinds = sorted({k for _, k in cells}, key=lambda k: (KIND_ORDER.index(k) if k in KIND_ORDER else 99, k))
    panels: list[tuple[str, Callable[[Sums], float], str]] = []  # title, a Sums method, colour map
    if len(result.experts) >= 2:
        panels += [("mean pairwise cosine", methodcaller("mean_cosine"), "coolwarm")]
        panels += [("sign conflict (TIES)", methodcaller("sign_conflict"), "magma")]
    panels += [("‖δ‖/‖θ_base‖ (mean over experts)", methodcaller("mean_rel_norm"), "viridis")]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 1.8 + 0.22 * len(layers)), squeeze=False
    )
    for ax, (title, fn, cmap) in zip(axes[0], panels, strict=True):
        grid = np.full((len(layers), len(kinds)), np.nan)
        for (layer, kind), s in cells.items():
            grid[layers.index(layer), kinds.index(kind)] = fn(s)
        finite = np.abs(grid[np.isfinite(grid)])
        # cosines are small: a scale centred on 0 and as wide as the largest |cos| shows them
        lim = max(float(finite.max()), 1e-12) if finite.size else 1.0
        vmin, vmax = (-lim, lim) if cmap == "coolwarm" else (None, None)
        colours = plt.get_cmap(cmap).with_extremes(bad="lightgrey")  # grey: no update, cosine undefined
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=colours, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(kinds)), kinds, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(layers)), [str(i) for i in layers], fontsize=7)
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_analysis(result: AnalysisResult, out_dir: Path) -> list[Path]:
    """analysis.csv (one row per tensor), summary.md and heatmap.png, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "analysis.csv", out_dir / "summary.md"]
    atomic_write_text(files[0], _csv(result))
    atomic_write_text(files[1], _summary(result))
    if result.cells():  # a checkpoint without decoder layers has nothing to map
        files.append(out_dir / "heatmap.png")
        plot_heatmap(result, files[-1])
    return files
