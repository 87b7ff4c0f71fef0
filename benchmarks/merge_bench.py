"""Merge wall time and peak memory: branchmerge vs mergekit vs the IO bound, on random Qwen3 checkpoints.

    python benchmarks/merge_bench.py --shape tiny                          # seconds, for development
    python benchmarks/merge_bench.py --shape 0.1b,0.5b --repeat 3 --json merge_bench.json

For each shape: writes a base and experts (bf16, sharded as save_pretrained does) under /tmp, reads them once
to warm the page cache (caches cannot be dropped without root, so every tool reads from memory: the figures
are compute + write + start-up, not disk reads), then times, each in a fresh subprocess whose peak RSS is
reported by a small launcher (so it is that run's own), tools interleaved within each repeat:
  - io:        benchmarks/_io_bound.py, read every input tensor, write one model's worth (no math);
  - ours:      branchmerge.merge.run_merge(config, out, show_progress=False);
  - mergekit:  mergekit-yaml config out --no-copy-tokenizer --quiet --lazy-unpickle.
Methods: slerp (9-point layer gradient for t, as the two-teacher recipe) and ties (density 0.5). Wall is the
median over repeats, RSS the maximum; "start" is each tool's start-up alone (imports, CLI), part of its wall.
Ours and mergekit's outputs are compared (bf16 ulps, see _compare.py) so a speed-up never hides a wrong
answer. Ratios: "vs mergekit" = mergekit wall / this wall (speed-up); "vs io" = this wall / io wall (1.0 = as
fast as merely reading and writing). The 1-minute load average is printed and saved: on a shared 2-core
machine compute-bound runs (TIES) vary several-fold with other work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from _checkpoints import SHAPES, checkpoint_bytes, n_parameters, qwen3_config, write_family
from _compare import compare_checkpoints
from _run import MERGEKIT_ARGS, find_mergekit, timed, warm_cache

HERE = Path(__file__).resolve().parent
OURS = "import sys; from branchmerge.merge import run_merge; run_merge(sys.argv[1], sys.argv[2], show_progress=False)"
BUSY_LOAD = 0.5
GRADIENT = [0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1]


@dataclass
class Row:
    shape: str
    params_m: float
    method: str
    tool: str
    wall_s: float  # median over repeats
    walls: list[float]
    peak_rss_mb: float  # max over repeats
    start_s: float  # start-up alone (imports, CLI), included in wall_s
    load_1m: float  # the machine's 1-minute load average before this method's runs
    vs_mergekit: float | None = None  # mergekit wall / this wall
    vs_io: float | None = None  # this wall / io wall
    max_ulp_bf16: float | None = None  # ours vs mergekit, on the ours row
    n_over_1ulp: int | None = None


def merge_configs(base: Path, experts: list[Path]) -> dict[str, dict]:
    return {
        "slerp": {
            "merge_method": "slerp",
            "base_model": str(base),
            "models": [{"model": str(base)}, {"model": str(experts[0])}],
            "parameters": {"t": GRADIENT},
            "dtype": "bfloat16",
        },
        "ties": {
            "merge_method": "ties",
            "base_model": str(base),
            "models": [
                {"model": str(e), "parameters": {"weight": round(1 / len(experts), 4), "density": 0.5}}
                for e in experts
            ],
            "dtype": "bfloat16",
        },
    }


def tool_commands(cfg_path: Path, cfg: dict, mergekit: str | None, args: argparse.Namespace) -> dict:
    """tool -> command, with "{out}" standing for the output folder."""
    inputs = dict.fromkeys([cfg["base_model"], *(m["model"] for m in cfg["models"])])
    commands = {
        "io": [sys.executable, str(HERE / "_io_bound.py"), "{out}", *inputs],
        "ours": [sys.executable, "-c", OURS, str(cfg_path), "{out}"],
    }
    if mergekit:
        commands["mergekit"] = [mergekit, str(cfg_path), "{out}", *args.mergekit_args.split()]
    return commands


def startup_times(mergekit: str | None, log: Path) -> dict[str, float]:
    """Seconds each tool takes to start and exit without merging (imports, CLI), measured once."""
    commands = {
        "io": [sys.executable, "-c", "import torch, safetensors.torch"],
        "ours": [sys.executable, "-c", "import branchmerge.merge"],
    }
    if mergekit:
        commands["mergekit"] = [mergekit, "--help"]
    return {tool: timed(cmd, log)[0] for tool, cmd in commands.items()}


def time_tools(root: Path, method: str, commands: dict, repeat: int) -> dict[str, list[tuple[float, float]]]:
    """(wall s, peak MB) per run and tool, tools interleaved in each repeat; the last outputs of ours and
    mergekit are kept for the comparison. A mergekit failure drops its rows, ours or io failing stops."""
    runs: dict[str, list[tuple[float, float]]] = {tool: [] for tool in commands}
    for r in range(repeat):
        for tool in list(runs):
            out = root / f"out-{method}-{tool}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [str(out) if a == "{out}" else a for a in commands[tool]]
            try:
                wall, rss = timed(cmd, root / f"{method}-{tool}.log")
            except RuntimeError as e:
                if tool != "mergekit":
                    raise
                print(f"   ! mergekit failed, its {method} rows are skipped: {e}")
                del runs[tool]
                continue
            runs[tool].append((wall, rss))
            print(f"   {method:6} {tool:9} run {r + 1}/{repeat}: {wall:7.2f} s  {rss:8.0f} MB")
            if tool == "io" or r + 1 < repeat:
                shutil.rmtree(out, ignore_errors=True)
    return runs


def check_outputs(root: Path, method: str, ours_row: Row) -> None:
    """Ours vs mergekit in bf16 ulps, onto the ours row; the worst tensors are printed."""
    diff = compare_checkpoints(root / f"out-{method}-ours", root / f"out-{method}-mergekit")
    ours_row.max_ulp_bf16, ours_row.n_over_1ulp = diff.max_ulp_bf16, diff.n_over_1ulp_bf16
    if not diff.same_layout:
        print(
            f"   ! layouts differ: only ours {diff.only_a[:3]}, only mergekit {diff.only_b[:3]}, "
            f"shapes {diff.mismatched[:3]}, dtypes {diff.dtypes[:3]}"
        )
    for t in diff.worst(3):
        print(
            f"   ! {t.name}: {t.max_ulp_bf16:g} ulp, {t.n_over_1ulp_bf16} entries > 1 ulp, "
            f"max |diff| {t.max_abs:.3g}"
        )


def bench_shape(
    label: str, shape: dict[str, int], args: argparse.Namespace, mergekit: str | None
) -> list[Row]:
    config = qwen3_config(shape, tied=not args.untied)
    params_m = round(n_parameters(config) / 1e6, 1)
    root = Path(tempfile.mkdtemp(prefix=f"merge-bench-{label.rstrip('*')}-", dir=args.tmp))
    rows: list[Row] = []
    try:
        t0 = time.perf_counter()
        base, experts = write_family(root / "models", config, args.experts, max_shard_size=args.shard_size)
        print(
            f"\n== {label}: {params_m}M parameters, {checkpoint_bytes(base) / 1e9:.2f} GB per model (bf16), "
            f"base + {args.experts} experts written in {time.perf_counter() - t0:.1f} s to {root}"
        )
        startup = startup_times(mergekit, root / "startup.log")
        print("   start-up without merging: " + ", ".join(f"{t} {s:.2f} s" for t, s in startup.items()))
        print(
            f"   warm-up: read {warm_cache([base, *experts]):.2f} GB of inputs once (the page cache is warm; "
            "OS caches cannot be dropped without root)"
        )
        for method, cfg in merge_configs(base, experts).items():
            if method not in args.methods:
                continue
            cfg_path = root / f"{method}.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            load = os.getloadavg()[0]
            if load > BUSY_LOAD:
                print(
                    f"   ! load average {load:.2f} before {method}: other work shares the CPUs, timings of "
                    "compute-bound runs are unreliable (torch's threads wait on each other)"
                )
            runs = time_tools(root, method, tool_commands(cfg_path, cfg, mergekit, args), args.repeat)
            by_tool = {
                tool: Row(
                    label,
                    params_m,
                    method,
                    tool,
                    statistics.median(w for w, _ in res),
                    [round(w, 3) for w, _ in res],
                    max(m for _, m in res),
                    startup[tool],
                    load,
                )
                for tool, res in runs.items()
            }
            for row in by_tool.values():
                row.vs_io = row.wall_s / by_tool["io"].wall_s
                if "mergekit" in by_tool:
                    row.vs_mergekit = by_tool["mergekit"].wall_s / row.wall_s
            if "mergekit" in by_tool and not args.no_check:
                check_outputs(root, method, by_tool["ours"])
            for tool in runs:
                shutil.rmtree(root / f"out-{method}-{tool}", ignore_errors=True)
            rows += by_tool.values()
    finally:
        if args.keep:
            print(f"   kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def _fmt(x: float | None, spec: str, unit: str = "") -> str:
    return "-" if x is None else format(x, spec) + unit


def print_table(rows: list[Row]) -> None:
    head = (
        f"{'shape':6} {'method':6} {'tool':9} {'wall s':>8} {'start s':>7} {'peak MB':>8} {'vs mergekit':>11} "
        f"{'vs io':>6} {'ulp':>5} {'>1ulp':>7}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(
            f"{r.shape:6} {r.method:6} {r.tool:9} {r.wall_s:8.2f} {r.start_s:7.2f} {r.peak_rss_mb:8.0f} "
            f"{_fmt(r.vs_mergekit, '.2f', 'x'):>11} {_fmt(r.vs_io, '.2f', 'x'):>6} "
            f"{_fmt(r.max_ulp_bf16, 'g'):>5} {_fmt(r.n_over_1ulp, 'd'):>7}"
        )
    print(
        "vs mergekit = mergekit wall / this wall (speed-up); vs io = this wall / io wall; ulp, >1ulp: ours vs "
        "mergekit in bf16 ulps (max, entries above 1)"
    )


def print_goals(rows: list[Row]) -> None:
    """The three targets of the merge-speed issue, each PASS/FAIL with its figure."""
    ours = [r for r in rows if r.tool == "ours"]
    print("\ngoals (ours):")
    for r in ours:
        speed = (
            "n/a (no mergekit)"
            if r.vs_mergekit is None
            else (f"{'PASS' if r.vs_mergekit >= 2 else 'FAIL'} {r.vs_mergekit:.2f}x")
        )
        io = f"{'PASS' if (r.vs_io or 0) <= 1.3 else 'FAIL'} {r.vs_io:.2f}x"
        print(f"  {r.shape:6} {r.method:6} >=2x faster than mergekit: {speed};  within 1.3x of io: {io}")
    shapes = list(dict.fromkeys(r.shape for r in rows))
    if len(shapes) < 2:
        print("  peak RSS flat across shapes: n/a (give two shapes, e.g. --shape 0.1b,0.5b)")
        return
    for method in dict.fromkeys(r.method for r in ours):
        by = {r.shape: r for r in ours if r.method == method}
        small, big = by[shapes[0]], by[shapes[-1]]
        growth = big.peak_rss_mb / small.peak_rss_mb
        verdict = "PASS" if growth <= 1.25 else "FAIL"
        print(
            f"  {method:6} peak RSS {shapes[0]} -> {shapes[-1]}: {small.peak_rss_mb:.0f} -> "
            f"{big.peak_rss_mb:.0f} MB ({growth:.2f}x; flat = at most 1.25x): {verdict}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="0.5b", help=f"preset(s), comma-separated: {', '.join(SHAPES)}")
    for key in SHAPES["tiny"]:
        p.add_argument(f"--{key.replace('_', '-')}", type=int, help=f"override the preset's {key}")
    p.add_argument("--untied", action="store_true", help="separate lm_head (default: tied embeddings)")
    p.add_argument("--experts", type=int, default=2, choices=(2, 3), help="experts merged by ties")
    p.add_argument("--methods", default="slerp,ties", help="comma-separated: slerp, ties")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument(
        "--mergekit",
        default="mergekit-yaml",
        help="mergekit-yaml executable (default: $MERGEKIT_YAML, else PATH); 'none' skips mergekit",
    )
    p.add_argument("--mergekit-args", default=MERGEKIT_ARGS, help=f"default: {MERGEKIT_ARGS!r}")
    p.add_argument(
        "--shard-size", default="500MB", help="input shard size (save_pretrained's max_shard_size)"
    )
    p.add_argument("--tmp", default="/tmp", help="where checkpoints are written (deleted afterwards)")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints and outputs' folder")
    p.add_argument("--no-check", action="store_true", help="skip comparing ours with mergekit's output")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    args.methods = args.methods.split(",")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mergekit = find_mergekit(args.mergekit)
    if mergekit is None:
        print(
            f"mergekit: {args.mergekit!r} not found (set --mergekit or $MERGEKIT_YAML); its rows are skipped. "
            "Install mergekit in a separate venv and pass --mergekit PATH."
        )
    rows: list[Row] = []
    for label in args.shape.split(","):
        if label not in SHAPES:
            raise SystemExit(f"--shape: {label!r} is not a preset (known: {', '.join(SHAPES)})")
        shape = {k: getattr(args, k) or v for k, v in SHAPES[label].items()}
        if shape != SHAPES[label]:
            label += "*"  # overridden
        rows += bench_shape(label, shape, args, mergekit)
    print_table(rows)
    print_goals(rows)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
        print(f"\nrows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
