"""Grader agreement with people: each grader's verdicts against hand-labelled answer/reference pairs.

    python benchmarks/grader_agreement.py                          # tests/data/grader_labels, about 30 s on 2 cores
    python benchmarks/grader_agreement.py --pending                # also the *.pending.jsonl files (code)
    python benchmarks/grader_agreement.py --labels DIR --show 5 --json out.json

Prints, per grader, how many labelled rows the grader's pass/fail equals the label on (the target is >= 99% per
grader), and the first --show disagreements with the row's reason and the grader's detail. The labels say what a
person would accept as a right answer (see `branchmerge.evaluate.agreement` for the layout); a grader error
counts as a fail. Exit status 1 when any grader is below --target.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from branchmerge.evaluate.agreement import agreement, load_labels

LABELS = Path(__file__).resolve().parent.parent / "tests" / "data" / "grader_labels"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--pending", action="store_true", help="also grade *.pending.jsonl (e.g. code labels)")
    ap.add_argument("--workers", type=int, default=None, help="grade_many workers (default: one per core)")
    ap.add_argument("--show", type=int, default=10, help="disagreements shown per grader")
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--json", type=Path, default=None, help="write the per-grader counts here")
    args = ap.parse_args()
    rows = load_labels(args.labels, pending=args.pending)
    start = time.perf_counter()
    results = agreement(rows, args.workers)
    seconds = time.perf_counter() - start
    print(f"{len(rows)} labelled pairs from {args.labels}, graded in {seconds:.1f} s\n")
    print("| grader | pairs | labelled pass | agree | agreement |\n|---|---|---|---|---|")
    for name in sorted(results):
        a = results[name]
        passes = sum(r.label for r in rows if r.grader == name)
        print(f"| {name} | {a.total} | {passes} | {a.agree} | {a.rate:.1%} |")
    for name in sorted(results):
        for row, detail in results[name].disagreements[: args.show]:
            want = "pass" if row.label else "fail"
            print(
                f"\n{row.where}: labelled {want} ({row.reason}); grader: {detail or 'pass'}\n  {row.answer[:160]!r}"
            )
    if args.json:
        summary = {
            n: {"pairs": a.total, "agree": a.agree, "rate": a.rate} for n, a in sorted(results.items())
        }
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return int(any(a.rate < args.target for a in results.values()))


if __name__ == "__main__":
    raise SystemExit(main())
