"""How often a SLERP output is the correctly rounded fp64 SLERP: a referee for ours vs mergekit.

    python benchmarks/slerp_rounding.py CONFIG.yaml OUT_DIR [OUT_DIR ...]

For every tensor the config interpolates (not the passed-through ones), computes SLERP in fp64 from the
inputs (mergekit's conventions: whole-tensor norms, lerp when |cos| > 0.9995), rounds it to each output's
dtype, and counts the entries of each output that differ. Use it on the folders merge_bench.py keeps
(`--keep`) to see which tool's rounding is right where the two disagree.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from branchmerge.merge.checkpoint import Checkpoint, TensorReader
from branchmerge.merge.config import load_merge_config
from branchmerge.merge.plan import build_plan


def main(argv: list[str]) -> int:
    cfg = load_merge_config(argv[0])
    plan = build_plan(cfg, cfg.source)
    outs = [Path(a) for a in argv[1:]]
    out_ckpts = [Checkpoint.open(o) for o in outs]
    wrong = [0] * len(outs)
    total = 0
    with TensorReader() as reader:
        for job in plan.jobs:
            if job.passthrough is not None:
                continue
            t = float(job.params.params["t"])
            assert job.params.base is not None
            a = reader.read(plan.inputs[job.params.base], job.name).double().flatten()
            b = reader.read(plan.inputs[1 - job.params.base], job.name).double().flatten()
            cos = float(a @ b / (a.norm() * b.norm()))
            if abs(cos) > 0.9995:
                ref = (1 - t) * a + t * b
            else:
                omega = math.acos(cos)
                ref = (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)
            for i, ckpt in enumerate(out_ckpts):
                got = reader.read(ckpt, job.name).flatten()
                wrong[i] += int((got != ref.to(got.dtype)).sum())
            total += a.numel()
    for o, w in zip(outs, wrong, strict=True):
        print(f"{o}: {w} of {total} interpolated entries are not the correctly rounded fp64 SLERP")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
