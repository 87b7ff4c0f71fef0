"""Grading throughput: gradings per second for math answers (math-verify) and code problems (sandboxed), graded
one after another in this process (`grade_many(..., workers=1)`, the baseline) vs `grade_many` over all cores.

    python benchmarks/grade_bench.py                                          # about 100 s on 2 cores
    python benchmarks/grade_bench.py --math 1000 --code 48 --repeat 3 --json benchmarks/results-grade-cpu.json

Items are built in one run, deterministically:
  - math: model-style answers ("... so the answer is $\\boxed{3/4}$") against MATH-style references: fractions,
    integers in prose, polynomials that must be expanded to compare, surds, intervals; half right, half wrong.
  - code: HumanEval-style tasks (a `check(candidate)` program, one sandboxed run per grading) and
    LiveCodeBench-style stdin tasks (two cases, so two sandboxed runs per grading), loaded through
    `evaluate.loaders.load_set` from files this script writes, so the specs are the ones evaluation uses;
    three quarters of the answers are right.
Each mode is run --repeat times, alternating, and the best kept (neighbours on this machine make single runs
vary). The parallel time includes `grade_many`'s pool start-up (a forkserver that imports math-verify, then
one worker per core), as a caller pays it. Code also gets a row with one worker more than cores (a sandboxed
run waits part of its time). All modes must give the same grades (checked).

CPU use: the CPU seconds of this process and all its descendants (pool workers, sandboxed programs) over the
timed call, divided by its wall time, is how many cores the grading kept busy (1.0 = one core, 2.0 = both).
Workers are children of the pool's forkserver, so their time reaches us only when that server exits: the
script stops it after each parallel call (a private multiprocessing call, used here only to measure).
Printed beside: "others", the machine's busy cores over the same interval (/proc/stat) less ours, i.e. what
other processes took (this machine is shared: a neighbour's work takes the cores a parallel run would use), and
the CPU milliseconds per grading in each mode (the pool's own overhead, and any slowdown of two busy vCPUs).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing.forkserver
import os
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from branchmerge.graders import grade_many
from branchmerge.graders.sandbox import isolation

Item = tuple[str, str, dict[str, Any]]


def math_items(n: int, seed: int = 0) -> tuple[list[Item], list[bool]]:
    """(answer, reference, spec) items and whether each answer is right, by construction."""
    rng = random.Random(seed)
    items, right = [], []
    for k in range(n):
        a, b = rng.randint(2, 40), rng.randint(41, 97)
        ok = k % 2 == 0
        d = 0 if ok else 1
        reference, answer = [
            (f"\\frac{{{a}}}{{{b}}}", f"Dividing, the answer is $\\boxed{{{a + d}/{b}}}$."),
            (str(a * b), f"Multiplying gives {a} * {b}, so the final answer is {a * b + d}."),
            (f"x^2 + {2 * a}x + {a * a}", f"Expanding, we get $\\boxed{{(x+{a + d})^2}}$"),
            (f"{a}\\sqrt{{2}}", f"Simplify: $\\boxed{{\\sqrt{{{2 * a * a + d}}}}}$"),
            (f"[{a}, {b})", f"The set is $\\boxed{{[{a},{b}{')' if ok else ']'}}}$"),
        ][k % 5]
        items.append((answer, reference, {"type": "math"}))
        right.append(ok)
    return items, right


HUMANEVAL_TASKS = [  # (entry point, canonical body, wrong body, check body)
    ("add", "return a + b", "return a - b", "assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0"),
    ("fib", "x, y = 0, 1\n    for _ in range(a):\n        x, y = y, x + y\n    return x", "return a",
     "assert candidate(10) == 55\n    assert candidate(1) == 1"),
    ("rev", "return a[::-1]", "return a", "assert candidate('abc') == 'cba'\n    assert candidate('') == ''"),
    ("is_prime", "return a > 1 and all(a % d for d in range(2, int(a ** 0.5) + 1))", "return a % 2 == 1",
     "assert candidate(97)\n    assert not candidate(91)\n    assert not candidate(1)"),
]  # fmt: skip
STDIN_TASKS = [  # (program, wrong program, two cases)
    ("print(sum(map(int, input().split())))", "print(max(map(int, input().split())))",
     [("1 2\n", "3\n"), ("10 -4\n", "6\n")]),
    ("n = int(input())\nprint(sum(i * i for i in range(n + 1)))", "print(int(input()) ** 2)",
     [("3\n", "14\n"), ("10\n", "385\n")]),
]  # fmt: skip


def code_items(n: int, tmp: Path) -> tuple[list[Item], list[bool]]:
    """n code gradings: three HumanEval-style for each LiveCodeBench-style one; a quarter of the answers wrong."""
    # Imported here, not at the top: every pool worker re-runs this script's top-level imports (forkserver and
    # spawn import the main module in each worker), so the top imports only what grading needs.
    from branchmerge.evaluate.loaders import load_set

    humaneval, stdin = [], []
    for i in range(n):
        if i % 4 == 3:
            program, _, cases = STDIN_TASKS[i % len(STDIN_TASKS)]
            tests = [{"input": x, "output": y, "testtype": "stdin"} for x, y in cases]
            stdin.append(
                {"question_id": f"s{i}", "question_content": "q", "public_test_cases": json.dumps(tests)}
            )
        else:
            name, _, _, check = HUMANEVAL_TASKS[i % len(HUMANEVAL_TASKS)]
            humaneval.append(
                {
                    "task_id": f"Bench/{i}",
                    "prompt": f"def {name}(a, b=None):\n",
                    "canonical_solution": "    pass\n",
                    "test": f"def check(candidate):\n    {check}\n",
                    "entry_point": name,
                }
            )
    for name, rows in (("humaneval", humaneval), ("livecodebench", stdin)):
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = {
        p.id: p for name in ("humaneval", "livecodebench") for p in load_set(name, tmp / f"{name}.jsonl")
    }
    items, right = [], []
    for i in range(n):
        ok = i % 8 not in (1, 6)  # three quarters right, spread over both kinds
        if i % 4 == 3:
            program, wrong, _ = STDIN_TASKS[i % len(STDIN_TASKS)]
            p = problems[f"s{i}"]
            answer = program if ok else wrong
        else:
            name, body, wrong, _ = HUMANEVAL_TASKS[i % len(HUMANEVAL_TASKS)]
            p = problems[f"Bench/{i}"]
            answer = f"```python\ndef {name}(a, b=None):\n    {body if ok else wrong}\n```"
        items.append((answer, p.reference, p.grader))
        right.append(ok)
    return items, right


def tree_cpu_s() -> float:
    """CPU seconds of this process plus every descendant it (or they) reaped."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def timed(items: list[Item], workers: int | None) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    cpu0, (busy0, total0), t0 = tree_cpu_s(), machine_ticks(), time.perf_counter()
    grades = grade_many(items, workers=workers)
    wall = time.perf_counter() - t0
    busy1, total1 = machine_ticks()
    if workers != 1:
        multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]  # reaps the workers' CPU time
    cpu = tree_cpu_s() - cpu0
    return {
        "wall_s": wall,
        "per_s": len(items) / wall,
        "cpu_s": cpu,
        "cores_busy": cpu / wall,
        "cpu_ms_per_item": 1000 * cpu / len(items),
        "machine_busy": (machine := (busy1 - busy0) / max(total1 - total0, 1)),
        "others_cores_busy": max(0.0, machine * cores - cpu / wall),  # neighbours' processes and the kernel's
        "passed": [g.passed for g in grades],
    }


def pool_start_up(cores: int) -> float:
    """Wall seconds of `grade_many` on one trivial math item per worker: what every parallel call pays first."""
    return float(timed([("1", "1", {"type": "math"})] * cores, workers=None)["wall_s"])


def bench(
    kind: str, items: list[Item], right: list[bool], repeat: int, modes: dict[str, int | None]
) -> dict[str, Any]:
    """Each mode (name -> grade_many's `workers`) run `repeat` times, alternating; the best run of each kept."""
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for _ in range(repeat):
        for mode, workers in modes.items():
            runs[mode].append(timed(items, workers))
    best = {mode: max(rs, key=lambda r: r["per_s"]) for mode, rs in runs.items()}
    base = best["sequential"]
    if any(r["passed"] != base["passed"] for r in best.values()):
        raise SystemExit(f"{kind}: the modes gave different grades")
    wrong = sum(p != r for p, r in zip(base["passed"], right, strict=True))
    print(f"{kind}: {len(items)} items, {len(items) - wrong} graded as expected")
    for mode, r in best.items():
        r["ratio"] = r["per_s"] / base["per_s"]
        r["all_per_s"] = [x["per_s"] for x in runs[mode]]
        del r["passed"]
        print(
            f"  {mode:22} {r['per_s']:7.1f} gradings/s  {r['ratio']:.2f}x  cores busy {r['cores_busy']:.2f}  "
            f"others {r['others_cores_busy']:.2f}  CPU ms per grading {r['cpu_ms_per_item']:.1f}"
        )
    return {"kind": kind, "items": len(items), "graded_as_expected": len(items) - wrong, "modes": best}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--math", type=int, default=1000, help="math gradings per run")
    p.add_argument("--code", type=int, default=48, help="code gradings per run")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    print(f"{cores} cores, sandbox isolation {isolation()!r}, load {load_before:.2f} before the run")
    m_items, m_right = math_items(args.math)
    grade_many(m_items[:20], workers=1)  # import math-verify and sympy before timing the baseline
    with tempfile.TemporaryDirectory() as tmp:
        c_items, c_right = code_items(args.code, Path(tmp))
    start_up = pool_start_up(cores)
    print(
        f"grade_many pool start-up (forkserver, imports, first math parse in each worker): {start_up:.2f} s"
    )
    modes: dict[str, int | None] = {"sequential": 1, f"grade_many ({cores} workers)": None}
    rows = [
        bench("math", m_items, m_right, args.repeat, modes),
        # Each sandboxed run also waits (process start, namespace set-up), so one worker per core leaves the
        # cores partly idle; the extra row shows what one more worker than cores gets.
        bench("code", c_items, c_right, args.repeat, modes | {f"workers={cores + 1}": cores + 1}),
    ]
    if args.json:
        meta = {"cores": cores, "isolation": isolation(), "pool_start_up_s": start_up}
        meta |= {"load_1m_before": load_before, "load_1m_after": os.getloadavg()[0]}
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
