"""Parity of our merge methods with mergekit 0.1.5, entry by entry, on tiny random Qwen3 checkpoints.

    python benchmarks/mergekit_parity.py                          # every method; exit 1 on a mismatch
    python benchmarks/mergekit_parity.py --methods slerp,ties --json parity.json

Writes a base and two experts under a temp dir, twice: tied embeddings and a separate lm_head (bf16, sharded
as save_pretrained does, q_norm/k_norm as Qwen3 has). Every config of _parity_cases.py (scalar parameters, a layer
gradient, {filter, value} rules; dtype bf16, fp32, and fp32 math with bf16 output) is merged by mergekit (all in
one mergekit process through _mergekit_batch.py, or one `mergekit-yaml` each with --cli) and by ours
(`branchmerge.merge.run_merge`), and each tensor pair is compared in bf16 ulps (_compare.py).

Row status: ok = same tensor names and shapes, every entry within 1 bf16 ulp (a dtype difference is noted and
the values compared in ours' dtype); FAIL otherwise; skip = our registry lacks the method; error = a tool
failed. Known differences, each explained by a twin row that differs in one setting (see `mark_known`):
bf16-math (mergekit does the arithmetic in bf16: the fp32-math twin agrees), tie-order (top-k ties broken in
index order: the ours-only `argsort_ties` twin agrees), tie-order+bf16-math (both).

DARE (dare_linear, dare_ties) is random, so it is compared by statistics on one expert in fp32, per tensor:
the kept fraction #(out != base) / #(expert != base) must be within 5 binomial sigmas of the density, the L1 norm
of the merged delta must equal weight * |expert - base|_1 (mergekit's rescale) within 1e-3, and ours must be
bit-identical across two runs with the same seed.

Exit code 1 when a deterministic row is not ok (known differences are let through with --allow-known) or a
DARE check fails; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from _checkpoints import qwen3_config, weight_files, write_family
from _compare import compare_checkpoints
from _parity_cases import CONFIGS, DARE, DARE_DENSITY, DARE_WEIGHT, Case, cases
from _run import MERGEKIT_ARGS, find_mergekit
from safetensors.torch import load_file

from branchmerge.merge import METHODS, run_merge

HERE = Path(__file__).resolve().parent
TINY = dict(hidden=64, layers=4, intermediate=128, heads=4, kv_heads=2, head_dim=16, vocab=512)
SHARD = "40KB"  # a few shards per model, so index files are exercised
SIGMAS = 5.0


@dataclass
class Row:
    method: str
    ours_method: str
    config: str
    variant: str
    dtype: str
    status: str  # ok / FAIL / skip / error, or known: bf16-math / tie-order / tie-order+bf16-math
    same_layout: bool = True  # same tensor names and shapes
    tensors: int = 0
    max_ulp_bf16: float = 0.0
    n_over_1ulp: int = 0
    max_ulp_native: float = 0.0
    worst: list[str] = field(default_factory=list)  # "tensor: ulps (n entries > 1 ulp)"
    note: str = ""

    @classmethod
    def of(cls, case: Case, status: str, note: str = "") -> Row:
        return cls(case.method, case.ours_method, case.config, case.variant, case.dtype, status, note=note)


def mergekit_python(mergekit: str) -> str:
    """The interpreter of mergekit's environment: the console script's shebang, else the python beside it."""
    first = Path(mergekit).read_bytes()[:400].split(b"\n", 1)[0].decode(errors="replace")
    if first.startswith("#!") and "python" in first and " " not in first[2:].strip():
        return first[2:].strip()
    return str(Path(mergekit).parent / "python")


def run_mergekit(jobs: list[dict], mergekit: str, cli: bool, log: Path) -> None:
    """Each job {"config", "out", "seed"}; failures leave `<out>.error`."""
    if not cli:
        jobs_file = log.with_suffix(".json")
        jobs_file.write_text(json.dumps(jobs))
        python = mergekit_python(mergekit)
        with open(log, "w") as out:
            subprocess.run([python, str(HERE / "_mergekit_batch.py"), str(jobs_file)], stdout=out, stderr=out)
        return
    for job in jobs:
        seed = ["--random-seed", str(job["seed"])] if job.get("seed") is not None else []
        cmd = [mergekit, job["config"], job["out"], *MERGEKIT_ARGS.split(), *seed]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            Path(job["out"] + ".error").write_text(done.stdout + done.stderr)


def run_ours(config: dict, out: Path) -> str | None:
    """None on success, else the error's last line."""
    try:
        run_merge(config, out, show_progress=False)
    except Exception as e:  # reported in the table, the sweep goes on
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def mk_error(out: Path) -> str | None:
    err = Path(str(out) + ".error")
    return err.read_text().strip().splitlines()[-1] if err.is_file() else None


def compare_row(case: Case, ours: Path, mk: Path) -> Row:
    row = Row.of(case, "ok")
    diff = compare_checkpoints(ours, mk)
    row.tensors = len(diff.tensors)
    row.max_ulp_bf16, row.n_over_1ulp = diff.max_ulp_bf16, diff.n_over_1ulp_bf16
    row.max_ulp_native = diff.max_ulp_native
    row.worst = [
        f"{t.name}: {t.max_ulp_bf16:g} ulp ({t.n_over_1ulp_bf16} > 1)" for t in diff.worst(len(diff.tensors))
    ]
    layout = [f"only ours: {n}" for n in diff.only_a] + [f"only mergekit: {n}" for n in diff.only_b]
    layout += diff.mismatched
    notes = (
        ["; ".join(layout[:3]) + (f" (+{len(layout) - 3} more)" if len(layout) > 3 else "")] if layout else []
    )
    if diff.dtypes:  # values are still compared, in ours' dtype
        notes.append(f"dtype differs in {len(diff.dtypes)} tensors, e.g. {diff.dtypes[0]} (ours vs mergekit)")
    row.note = " | ".join(notes)
    row.same_layout = not layout
    if layout or row.max_ulp_bf16 > 1:
        row.status = "FAIL"
    return row


def mark_known(rows: list[Row]) -> None:
    """Relabel FAIL rows that a twin explains (the twin runs the same config with one thing changed):
    bf16-math: a bf16 row whose fp32-math twin is ok (mergekit did the arithmetic in bf16);
    tie-order: a row whose ours-only `argsort_ties` twin is ok (top-k ties broken by index, not argsort order),
    tie-order+bf16-math: the same when that twin is bf16-math."""
    by = {(r.method, r.config, r.variant, r.dtype): r for r in rows}
    for r in rows:
        twin = by.get((r.method, r.config, r.variant, "fp32-math"))
        if (
            r.dtype == "bf16"
            and r.status == "FAIL"
            and r.same_layout
            and twin is not None
            and twin.status == "ok"
        ):
            r.status = "bf16-math"
    for r in rows:
        twin = by.get((r.method, f"{r.config}/argsort_ties", r.variant, r.dtype))
        if r.status == "FAIL" and r.same_layout and twin is not None and twin.status in ("ok", "bf16-math"):
            r.status = "tie-order" + ("+bf16-math" if twin.status == "bf16-math" else "")


def dare_stats(out: Path, base: Path, expert: Path) -> dict:
    """Per-tensor kept fraction and L1 ratio of the merged delta; the worst of each over the model."""
    b, e = _load(base), _load(expert)
    o = _load(out)
    worst_z, worst_l1, kept, total = 0.0, 0.0, 0, 0
    for name, theta_b in b.items():
        delta = e[name].double() - theta_b.double()
        merged = o[name].double() - theta_b.double()
        moved = delta != 0
        n = int(moved.sum())
        k = int(((merged != 0) & moved).sum())
        kept, total = kept + k, total + n
        sigma = (DARE_DENSITY * (1 - DARE_DENSITY) / max(n, 1)) ** 0.5
        worst_z = max(worst_z, abs(k / max(n, 1) - DARE_DENSITY) / sigma)
        l1 = float(merged.abs().sum() / (DARE_WEIGHT * delta.abs().sum()))
        worst_l1 = max(worst_l1, abs(l1 - 1))
    return {"kept": kept / total, "worst_z": worst_z, "worst_l1_err": worst_l1}


def _load(model_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in weight_files(model_dir) for k, v in load_file(f).items()}


def identical(a: Path, b: Path) -> bool:
    ta, tb = _load(a), _load(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def check_dare(root: Path, family: tuple[str, str, str], mergekit: str, cli: bool) -> list[dict]:
    """One row per DARE method and tool: kept fraction, worst z, worst L1 error, status (+ repeatable: ours)."""
    base, e1, _ = family
    root.mkdir(parents=True)
    configs = {method: build(*family) for method, build in DARE.items()}
    jobs = []
    for method, config in configs.items():
        (root / f"{method}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        jobs.append({"config": str(root / f"{method}.yaml"), "out": str(root / f"mk-{method}"), "seed": 0})
    run_mergekit(jobs, mergekit, cli, root / "mergekit.log")
    results: list[dict] = []
    for method, config in configs.items():
        ours, again, mk = root / f"ours-{method}", root / f"ours-{method}-again", root / f"mk-{method}"
        row: dict = {"method": method, "tool": "ours"}
        if method not in METHODS:
            row.update(status="skip", note="not in branchmerge.merge.METHODS yet")
        elif error := run_ours(config, ours) or run_ours(config, again):
            row.update(status="error", note=error)
        else:
            row.update(dare_stats(ours, Path(base), Path(e1)), repeatable=identical(ours, again))
        results.append(row)
        row = {"method": method, "tool": "mergekit"}
        if error := mk_error(mk):
            row.update(status="error", note=error)
        else:
            row.update(dare_stats(mk, Path(base), Path(e1)))
        results.append(row)
    for row in results:
        if "kept" in row:
            ok = row["worst_z"] <= SIGMAS and row["worst_l1_err"] <= 1e-3 and row.get("repeatable", True)
            row["status"] = "ok" if ok else "FAIL"
    return results


def print_tables(rows: list[Row], dare: list[dict]) -> None:
    head = (
        f"{'method':15} {'config':21} {'model':6} {'dtype':9} {'tensors':>7} {'ulp':>7} {'>1ulp':>6} "
        f"{'native':>8}  {'status':19} worst tensor"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        worst = r.worst[0].removeprefix("model.") if r.worst and r.status != "ok" else ""
        print(
            f"{r.method:15} {r.config:21} {r.variant:6} {r.dtype:9} {r.tensors:7d} {r.max_ulp_bf16:7.4g} "
            f"{r.n_over_1ulp:6d} {r.max_ulp_native:8.3g}  {r.status:19} {worst}"
        )
        for line in r.worst[1:3] if r.status in ("FAIL", "error") else []:
            print(f"{'':17}{line}")
        if r.note:
            print(f"{'':17}{r.note}")
    summary: dict[str, dict[str, int]] = {}
    for r in rows:
        counts = summary.setdefault(r.method, {})
        counts[r.status] = counts.get(r.status, 0) + 1
    print(
        "\nper method: "
        + "; ".join(f"{m} " + ", ".join(f"{n} {s}" for s, n in c.items()) for m, c in summary.items())
    )
    print(
        f"\nDARE (one expert, density {DARE_DENSITY}, weight {DARE_WEIGHT}, fp32; kept fraction per tensor within "
        f"{SIGMAS:g} sigma, L1 rescale within 1e-3, ours repeatable):"
    )
    for d in dare:
        if "kept" not in d:
            print(f"  {d['method']:12} {d['tool']:9} {d['status']}: {d.get('note', '')}")
            continue
        rep = f"  repeatable {d['repeatable']}" if "repeatable" in d else ""
        print(
            f"  {d['method']:12} {d['tool']:9} kept {d['kept']:.4f}  worst |z| {d['worst_z']:.2f}  "
            f"worst |L1 ratio - 1| {d['worst_l1_err']:.1e}{rep}  {d['status']}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(CONFIGS), help="comma-separated mergekit method names")
    p.add_argument(
        "--mergekit",
        default="mergekit-yaml",
        help="mergekit-yaml executable (default: $MERGEKIT_YAML, else PATH)",
    )
    p.add_argument("--cli", action="store_true", help="one mergekit-yaml process per config (slow)")
    p.add_argument("--no-dare", action="store_true", help="skip the DARE statistics")
    p.add_argument("--allow-known", action="store_true", help="known differences (bf16-math, tie-order) pass")
    p.add_argument("--tmp", default=None, help="parent of the temp dir (default: the system's)")
    p.add_argument("--keep", action="store_true", help="keep checkpoints and outputs")
    p.add_argument("--json", type=Path, help="write rows and DARE results here")
    args = p.parse_args(argv)
    args.methods = args.methods.split(",")
    unknown = [m for m in args.methods if m not in CONFIGS]
    if unknown:
        p.error(f"--methods: {unknown[0]!r} has no parity configs (known: {', '.join(CONFIGS)})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mergekit = find_mergekit(args.mergekit)
    if mergekit is None:
        print("mergekit-yaml not found (set --mergekit or $MERGEKIT_YAML): nothing to compare against.")
        return 2
    root = Path(tempfile.mkdtemp(prefix="mergekit-parity-", dir=args.tmp))
    try:
        families: dict[str, tuple[str, str, str]] = {}
        for variant, tied in (("tied", True), ("untied", False)):
            b, (e1, e2) = write_family(root / variant, qwen3_config(TINY, tied=tied), 2, max_shard_size=SHARD)
            families[variant] = (str(b), str(e1), str(e2))
        todo = cases(args.methods, families)
        rows: list[Row] = []
        jobs = {}
        for case in todo:
            if case.ours_method not in METHODS:
                continue
            cfg = root / "configs" / f"{case.mergekit_key}.yaml"
            cfg.parent.mkdir(exist_ok=True)
            cfg.write_text(yaml.safe_dump(case.mergekit_yaml, sort_keys=False))
            jobs[case.mergekit_key] = {
                "config": str(cfg),
                "out": str(root / "mk" / case.mergekit_key),
                "seed": 0,
            }
        print(
            f"{len(todo)} configs, {len(jobs)} mergekit runs ({'one process each' if args.cli else 'one process'}) "
            f"under {root}"
        )
        run_mergekit(list(jobs.values()), mergekit, args.cli, root / "mergekit.log")
        for case in todo:
            if case.ours_method not in METHODS:
                rows.append(
                    Row.of(case, "skip", f"{case.ours_method} is not in branchmerge.merge.METHODS yet")
                )
                continue
            mk_out, ours_out = root / "mk" / case.mergekit_key, root / "ours" / case.key
            mk_failed = mk_error(mk_out)
            error = f"mergekit: {mk_failed}" if mk_failed else run_ours(case.ours_yaml, ours_out)
            if error:
                rows.append(Row.of(case, "error", error))
                continue
            rows.append(compare_row(case, ours_out, mk_out))
        mark_known(rows)
        dare = [] if args.no_dare else check_dare(root / "dare", families["tied"], mergekit, args.cli)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print_tables(rows, dare)
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "dare": dare}, indent=2) + "\n")
        print(f"\nwritten to {args.json}")
    passing = {"ok", "skip"} | (
        {"bf16-math", "tie-order", "tie-order+bf16-math"} if args.allow_known else set()
    )
    bad = [r for r in rows if r.status not in passing] + [d for d in dare if d["status"] in {"FAIL", "error"}]
    print(f"\n{len(bad)} failing rows" + (" (exit 1)" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
