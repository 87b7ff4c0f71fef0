"""Each workload quiet and beside one competing CPU-bound process: does it keep its speed on a busy machine?

    python benchmarks/busy_bench.py --workloads train,generate --repeat 3
    python benchmarks/busy_bench.py --workloads slerp,ties --shape 0.5b --repeat 3 --mergekit /tmp/mk/bin/mergekit-yaml

"quiet" adds no load of ours (other users of the machine are not under our control: the 1-minute load average is
printed with every figure); "busy" starts one `python -c "while True: pass"` at the same priority for the run.
Each repeat runs every variant of a workload quiet, then busy, alternating variants, each in a fresh process.
Printed per (workload, variant, condition): median and spread (min-max) of the repeats, and busy / quiet.

Variants:
- train, generate (`_busy_workloads.py`, seconds per step / per batch of the shipped tiny student):
  `torch` = torch's defaults (one intra-op thread per core, libgomp's spinning waits), `passive-all` = the same
  threads with `OMP_WAIT_POLICY=PASSIVE`, `passive-1` = one thread, passive. `branchmerge.runtime` picks
  passive-all for training and passive-1 for generating with a small model.
- slerp, ties (random Qwen3 checkpoints as in merge_bench.py): `ours` = `run_merge` under the policy (as the
  CLI runs it: one intra-op thread per core, sleeping waits), `ours-1` = the same on one thread, `ours-torch` =
  `run_merge` with torch's defaults (one thread per core, spinning waits), `mergekit` = mergekit-yaml (baseline for
  the ratios), `io` = reading every input and writing one model (`_io_bound.py`). Wall time of the whole
  process, start-up included. Each run gets an empty digest cache, so ours hashes its inputs every time.
A run longer than --timeout is stopped (marked with `>`): a small workload counts the units it finished, a
merge counts the timeout, so either figure is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _checkpoints import SHAPES, qwen3_config, write_family
from _run import MERGEKIT_ARGS, find_mergekit, warm_cache
from merge_bench import merge_configs

HERE = Path(__file__).resolve().parent
SRC = str(HERE.parent / "src")
HOG = "while True: pass"
OURS = (
    "import sys; from branchmerge import runtime; runtime.prepare_environment(); "
    "from branchmerge.merge import run_merge; run_merge(sys.argv[1], sys.argv[2], show_progress=False)"
)
OURS_TORCH = "import sys; from branchmerge.merge import run_merge; run_merge(sys.argv[1], sys.argv[2], show_progress=False)"
# torch's defaults for `ours-torch`: libgomp spins, one thread per core
TORCH_DEFAULTS = {"BRANCHMERGE_OMP_WAIT": "active", "BRANCHMERGE_THREADS": str(os.cpu_count() or 1)}


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "KMP_", "MKL_", "BRANCHMERGE_"))}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def small_variants(workload: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    script = [sys.executable, str(HERE / "_busy_workloads.py"), workload]
    return {
        "torch": ([*script, "torch"], {}),
        "passive-all": ([*script, "torch"], {"OMP_WAIT_POLICY": "PASSIVE"}),
        "passive-1": ([*script, "torch"], {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}),
    }


def merge_variants(
    cfg: Path, inputs: list[str], mergekit: str | None
) -> dict[str, tuple[list[str], dict[str, str]]]:
    variants = {
        "ours": ([sys.executable, "-c", OURS, str(cfg), "{out}"], {}),
        "ours-1": ([sys.executable, "-c", OURS, str(cfg), "{out}"], {"BRANCHMERGE_THREADS": "1"}),
        "ours-torch": ([sys.executable, "-c", OURS_TORCH, str(cfg), "{out}"], TORCH_DEFAULTS),
        "io": ([sys.executable, str(HERE / "_io_bound.py"), "{out}", *inputs], {}),
    }
    if mergekit:
        variants["mergekit"] = ([mergekit, str(cfg), "{out}", *MERGEKIT_ARGS.split()], {})
    return variants


def run_once(cmd: list[str], env: dict[str, str], out: Path, timeout: float) -> tuple[float, bool]:
    """(seconds, timed out): the median of the units the workload printed (one figure a line), else the wall
    time of the process. A run stopped at the timeout counts its finished units, or the timeout if none."""
    shutil.rmtree(out, ignore_errors=True)
    argv = [str(out) if a == "{out}" else a for a in cmd]
    # an empty digest cache for every run: ours hashes its inputs each time, as a first merge does
    cache = Path(tempfile.mkdtemp(prefix="xdg-cache-", dir=out.parent))
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv,
            env=_env({**env, "XDG_CACHE_HOME": str(cache)}),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        stdout, late = done.stdout, False
    except subprocess.TimeoutExpired as e:
        stdout, late = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), True
    wall = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    if not late and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} exited {done.returncode}:\n{done.stderr[-2000:]}")
    units = [float(line) for line in stdout.split()]
    return (statistics.median(units) if units else min(wall, timeout)), late


def bench(
    workload: str, variants: dict[str, tuple[list[str], dict[str, str]]], args: argparse.Namespace, root: Path
) -> list[dict]:
    runs: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    loads: dict[tuple[str, str], list[float]] = {}
    for r in range(args.repeat):
        for condition in ("quiet", "busy"):
            hog = subprocess.Popen([sys.executable, "-c", HOG]) if condition == "busy" else None
            try:
                for name, (cmd, env) in variants.items():
                    load = os.getloadavg()[0]
                    figure, late = run_once(cmd, env, root / "out", args.timeout)
                    runs.setdefault((name, condition), []).append((figure, late))
                    loads.setdefault((name, condition), []).append(load)
                    mark = ">" if late else " "
                    print(
                        f"  {workload:8} {name:10} {condition:5} run {r + 1}: {mark}{figure:8.3f} s  (load {load:.1f})",
                        flush=True,
                    )
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    rows = []
    for (name, condition), res in runs.items():
        figures = [f for f, _ in res]
        rows.append(
            dict(
                workload=workload,
                variant=name,
                condition=condition,
                median_s=statistics.median(figures),
                min_s=min(figures),
                max_s=max(figures),
                runs=[round(f, 3) for f in figures],
                timed_out=sum(late for _, late in res),
                load_1m=round(statistics.median(loads[(name, condition)]), 2),
            )
        )
    return rows


def print_rows(rows: list[dict], baseline: dict[str, str]) -> None:
    print(
        f"\n{'workload':8} {'variant':10} {'cond':5} {'median s':>9} {'min-max s':>17} {'busy/quiet':>10} {'vs base':>8} {'load':>5}"
    )
    by = {(r["workload"], r["variant"], r["condition"]): r for r in rows}
    for r in rows:
        quiet = by[(r["workload"], r["variant"], "quiet")]["median_s"]
        base = by.get((r["workload"], baseline.get(r["workload"], ""), r["condition"]))
        vs = f"{base['median_s'] / r['median_s']:.2f}x" if base else "-"
        late = f" ({r['timed_out']} >timeout)" if r["timed_out"] else ""
        print(
            f"{r['workload']:8} {r['variant']:10} {r['condition']:5} {r['median_s']:9.3f} "
            f"{r['min_s']:8.3f}-{r['max_s']:<8.3f} {r['median_s'] / quiet:9.2f}x {vs:>8} {r['load_1m']:5.1f}{late}"
        )
    print("vs base: the baseline's median / this median (mergekit for merges, torch's defaults otherwise)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="train,generate,slerp,ties")
    p.add_argument("--shape", default="0.5b", choices=list(SHAPES), help="merge checkpoints' shape")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300, help="seconds before a run is stopped and counted")
    p.add_argument("--mergekit", default="mergekit-yaml", help="mergekit-yaml path; 'none' skips it")
    p.add_argument("--tmp", default="/tmp")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    workloads = args.workloads.split(",")
    root = Path(tempfile.mkdtemp(prefix="busy-bench-", dir=args.tmp))
    rows: list[dict] = []
    baseline = {"train": "torch", "generate": "torch"}
    try:
        for w in (w for w in workloads if w in ("train", "generate")):
            rows += bench(w, small_variants(w), args, root)
        merges = [w for w in workloads if w in ("slerp", "ties")]
        if merges:
            mergekit = find_mergekit(args.mergekit)
            if mergekit is None:
                print(f"mergekit: {args.mergekit!r} not found; its rows are skipped")
            base, experts = write_family(root / "models", qwen3_config(SHAPES[args.shape]), 2)
            warm_cache([base, *experts])
            for method, cfg in merge_configs(base, experts).items():
                if method not in merges:
                    continue
                path = root / f"{method}.yaml"
                path.write_text(yaml.safe_dump(cfg, sort_keys=False))
                inputs = list(dict.fromkeys([cfg["base_model"], *(m["model"] for m in cfg["models"])]))
                baseline[method] = "mergekit"
                rows += bench(method, merge_variants(path, inputs, mergekit), args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_rows(rows, baseline)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
