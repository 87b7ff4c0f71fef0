"""Each workload quiet and beside one competing CPU-bound process: does it keep its speed on a busy machine?

    python benchmarks/busy_bench.py --workloads train,generate --repeat 3
    python benchmarks/busy_bench.py --workloads slerp,ties --shape 0.5b --repeat 3 --mergekit /tmp/mk/bin/mergekit-yaml
    python benchmarks/busy_bench.py --workloads slerp,ties --shape 0.1b,0.5b --variants ours,ours-cached,mergekit,io
    python benchmarks/busy_bench.py --workloads demo-quick --repeat 3

"quiet" adds no load of ours (other users of the machine are not under our control: the 1-minute load average is
printed with every figure); "busy" starts one `python -c "while True: pass"` at the same priority for the run.
Each repeat runs every variant of a workload quiet, then busy, alternating variants, each in a fresh process.
Printed per (workload, variant, condition): median and spread (min-max) of the repeats, and busy / quiet.

Variants:
- train, generate (`_busy_workloads.py`, seconds per step / per batch of the shipped tiny student):
  `torch` = torch's defaults (one intra-op thread per core, libgomp's spinning waits), `passive-all` = the same
  threads with `OMP_WAIT_POLICY=PASSIVE`, `passive-1` = one thread, passive. `branchmerge.runtime` picks
  passive-all for training and passive-1 for generating with a small model.
- slerp, ties (random bf16 Qwen3 checkpoints as in merge_bench.py, base + 2 experts, for each `--shape`):
  `ours` = `run_merge` under the policy (as the CLI runs it: one intra-op thread per core, sleeping waits),
  `ours-cached` = the same with the inputs' sha256 already in the digest cache (any later merge of the same
  inputs), `ours-1` = the policy on one thread, `ours-torch` = `run_merge` with torch's defaults (one thread
  per core, spinning waits), `mergekit` = mergekit-yaml (baseline for the ratios), `io` = reading every byte
  of the inputs and writing one model's worth, plain file IO (`_io_bound.py`). `--variants` picks among them
  (default: ours, mergekit, io). Wall time of the whole process, start-up included. Every run but
  `ours-cached` gets an empty digest cache, so ours hashes its inputs every time, as a first merge does.
  After the table, the issue's targets per merge and condition: ours vs mergekit (>= 2x quiet, >= 1.5x busy)
  and SLERP vs io (<= 1.3x quiet), from the medians and from the per-repeat paired ratios.
- demo-quick: `branchmerge demo --quick` into a fresh folder (`ours`, the only variant), wall time of the
  whole process; its targets: <= 120 s quiet, <= 180 s busy.
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
from _checkpoints import SHAPES, qwen3_config, weight_files, write_family
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


# the quick demo in a fresh folder, its console output dropped (run_once reads a workload's stdout as figures)
DEMO_QUICK = (
    "import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-m', 'branchmerge', 'demo', '--quick', "
    "'--out', sys.argv[1]], stdout=subprocess.DEVNULL).returncode)"
)
DEMO_TARGETS = {"quiet": 120.0, "busy": 180.0}  # seconds

MERGE_VARIANTS = ("ours", "ours-cached", "ours-before", "ours-1", "ours-torch", "mergekit", "io")


def merge_variants(
    cfg: Path,
    inputs: list[str],
    mergekit: str | None,
    names: list[str],
    digests: Path,
    before: Path | None = None,
) -> dict[str, tuple[list[str], dict[str, str]]]:
    """The chosen variants, in the order given; `digests`: a digest cache that already holds the inputs';
    `before`: another checkout's src folder, run as `ours-before` (e.g. `git archive` of an older commit)."""
    ours = [sys.executable, "-c", OURS, str(cfg), "{out}"]
    variants = {
        "ours": (ours, {}),
        "ours-cached": (ours, {"XDG_CACHE_HOME": str(digests)}),
        "ours-1": (ours, {"BRANCHMERGE_THREADS": "1"}),
        "ours-torch": ([sys.executable, "-c", OURS_TORCH, str(cfg), "{out}"], TORCH_DEFAULTS),
        "io": ([sys.executable, str(HERE / "_io_bound.py"), "{out}", *inputs], {}),
    }
    if before is not None:
        variants["ours-before"] = (ours, {"PYTHONPATH": str(before)})
    if mergekit:
        variants["mergekit"] = ([mergekit, str(cfg), "{out}", *MERGEKIT_ARGS.split()], {})
    return {name: variants[name] for name in names if name in variants}


def warm_digests(cache: Path, inputs: list[str]) -> None:
    """Fill `cache` with the inputs' sha256, as a first merge of them leaves it."""
    code = (
        "import sys; from pathlib import Path; from branchmerge.merge.model_files import cached_sha256; "
        "[cached_sha256(Path(f)) for f in sys.argv[1:]]"
    )
    files = [str(f) for d in inputs for f in weight_files(Path(d))]
    subprocess.run([sys.executable, "-c", code, *files], env=_env({"XDG_CACHE_HOME": str(cache)}), check=True)


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
            env=_env({"XDG_CACHE_HOME": str(cache), **env}),
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
                        f"  {workload:10} {name:11} {condition:5} run {r + 1}: {mark}{figure:8.3f} s  (load {load:.1f})",
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
        f"\n{'workload':10} {'variant':11} {'cond':5} {'median s':>9} {'min-max s':>17} {'busy/quiet':>10} "
        f"{'vs base':>8} {'load':>5}"
    )
    by = {(r["workload"], r["variant"], r["condition"]): r for r in rows}
    for r in rows:
        quiet = by[(r["workload"], r["variant"], "quiet")]["median_s"]
        base = by.get((r["workload"], baseline.get(r["workload"], ""), r["condition"]))
        vs = f"{base['median_s'] / r['median_s']:.2f}x" if base else "-"
        late = f" ({r['timed_out']} >timeout)" if r["timed_out"] else ""
        print(
            f"{r['workload']:10} {r['variant']:11} {r['condition']:5} {r['median_s']:9.3f} "
            f"{r['min_s']:8.3f}-{r['max_s']:<8.3f} {r['median_s'] / quiet:9.2f}x {vs:>8} {r['load_1m']:5.1f}{late}"
        )
    print("vs base: the baseline's median / this median (mergekit for merges, torch's defaults otherwise)")


def _paired(a: dict, b: dict) -> list[float]:
    """a's run / b's run, repeat by repeat (both were run in the same repeat, one after the other)."""
    return [x / y for x, y in zip(a["runs"], b["runs"], strict=True)]


def print_demo_targets(rows: list[dict]) -> None:
    for r in (r for r in rows if r["workload"] == "demo-quick"):
        goal = DEMO_TARGETS[r["condition"]]
        verdict = "PASS" if r["median_s"] <= goal and not r["timed_out"] else "FAIL"
        print(
            f"  demo-quick {r['condition']:5} median {r['median_s']:.1f} s ({r['min_s']:.1f}-{r['max_s']:.1f}) "
            f"[<= {goal:.0f} s: {verdict}]   (load {r['load_1m']:.1f})"
        )


def print_targets(rows: list[dict]) -> None:
    """The merge targets of the issue, for each merge, condition and ours-variant: from the medians and from
    the median of the per-repeat paired ratios (each ratio from two runs made side by side)."""
    by = {(r["workload"], r["variant"], r["condition"]): r for r in rows}
    merges = dict.fromkeys(r["workload"] for r in rows if r["workload"].startswith(("slerp", "ties")))
    if not merges:
        return
    print("\ntargets (ratio of medians; median of paired ratios, min-max):")
    for w in merges:
        for cond in ("quiet", "busy"):
            for ours in (v for v in ("ours", "ours-cached", "ours-before") if (w, v, cond) in by):
                me = by[(w, ours, cond)]
                mk, io = by.get((w, "mergekit", cond)), by.get((w, "io", cond))
                parts = []
                if mk is not None:
                    goal = 2.0 if cond == "quiet" else 1.5
                    pr = _paired(mk, me)
                    ratio = mk["median_s"] / me["median_s"]
                    parts.append(
                        f"vs mergekit {ratio:.2f}x; {statistics.median(pr):.2f}x ({min(pr):.2f}-{max(pr):.2f}) "
                        f"[>= {goal}x: {'PASS' if min(ratio, statistics.median(pr)) >= goal else 'FAIL'}]"
                    )
                if io is not None and w.startswith("slerp"):
                    pr = _paired(me, io)
                    ratio = me["median_s"] / io["median_s"]
                    verdict = f" [<= 1.3x: {'PASS' if max(ratio, statistics.median(pr)) <= 1.3 else 'FAIL'}]"
                    parts.append(
                        f"/ io {ratio:.2f}x; {statistics.median(pr):.2f}x ({min(pr):.2f}-{max(pr):.2f})"
                        + (verdict if cond == "quiet" else "")
                    )
                print(f"  {w:10} {ours:11} {cond:5} " + "   ".join(parts) + f"   (load {me['load_1m']:.1f})")


def family(models: Path | None, root: Path, shape: str) -> tuple[Path, list[Path]]:
    """Base + 2 experts of `shape`: reused from `models`/shape when written there before, else written."""
    folder = (models or root / "models") / shape
    if (folder / "expert2" / "config.json").is_file():
        return folder / "base", [folder / "expert1", folder / "expert2"]
    shutil.rmtree(folder, ignore_errors=True)
    return write_family(folder, qwen3_config(SHAPES[shape]), 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="train,generate,slerp,ties")
    p.add_argument(
        "--shape", default="0.5b", help=f"merge checkpoints' shape(s), comma-separated: {', '.join(SHAPES)}"
    )
    p.add_argument(
        "--variants", default="ours,mergekit,io", help=f"merge variants: {', '.join(MERGE_VARIANTS)}"
    )
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300, help="seconds before a run is stopped and counted")
    p.add_argument("--mergekit", default="mergekit-yaml", help="mergekit-yaml path; 'none' skips it")
    p.add_argument("--tmp", default="/tmp")
    p.add_argument(
        "--models", type=Path, help="keep the checkpoints under DIR/<shape> and reuse them on rerun"
    )
    p.add_argument("--before-src", type=Path, help="src folder of an older checkout, run as `ours-before`")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    workloads = args.workloads.split(",")
    shapes = args.shape.split(",")
    variants = args.variants.split(",")
    for name, known in ((shapes, SHAPES), (variants, MERGE_VARIANTS)):
        if unknown := [x for x in name if x not in known]:
            p.error(f"unknown {unknown}; known: {', '.join(known)}")
    root = Path(tempfile.mkdtemp(prefix="busy-bench-", dir=args.tmp))
    rows: list[dict] = []
    baseline = {"train": "torch", "generate": "torch"}
    try:
        for w in (w for w in workloads if w in ("train", "generate")):
            rows += bench(w, small_variants(w), args, root)
        if "demo-quick" in workloads:
            rows += bench(
                "demo-quick", {"ours": ([sys.executable, "-c", DEMO_QUICK, "{out}"], {})}, args, root
            )
        merges = [w for w in workloads if w in ("slerp", "ties")]
        mergekit = find_mergekit(args.mergekit) if merges else None
        if merges and mergekit is None:
            print(f"mergekit: {args.mergekit!r} not found; its rows are skipped")
        for shape in shapes if merges else []:
            base, experts = family(args.models, root, shape)
            warm_cache([base, *experts])
            for method, cfg in merge_configs(base, experts).items():
                if method not in merges:
                    continue
                path = root / f"{method}.yaml"
                path.write_text(yaml.safe_dump(cfg, sort_keys=False))
                inputs = list(dict.fromkeys([cfg["base_model"], *(m["model"] for m in cfg["models"])]))
                digests = root / f"digests-{shape}"
                if "ours-cached" in variants:
                    warm_digests(digests, inputs)
                label = f"{method}@{shape}"
                baseline[label] = "mergekit"
                for row in bench(
                    label,
                    merge_variants(path, inputs, mergekit, variants, digests, args.before_src),
                    args,
                    root,
                ):
                    rows.append({**row, "shape": shape})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_rows(rows, baseline)
    print_targets(rows)
    print_demo_targets(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
