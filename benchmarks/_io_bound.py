"""The IO bound of a merge: read every byte of every input's weights, write one model's worth. No math.

    python benchmarks/_io_bound.py OUT_DIR INPUT_DIR [INPUT_DIR ...]

Plain file IO into one reused buffer (`readinto`, 16 MB blocks): every weight file of every input is read in
full, and the first input's weight files are written to OUT_DIR as they are read (same names, same bytes), so
the output has the size and shard layout of one model. It imports torch, as any torch-based merge (ours,
mergekit) must, so start-up is counted the same way; nothing else (not transformers). Run as a subprocess by merge_bench.py and
busy_bench.py, which time it.

safetensors' `safe_open(...).get_tensor` (0.8) returns tensors backed by the memory-mapped file without copying,
so an IO pass built on it would read nothing of an input it does not write: plain reads touch every byte.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch  # noqa: F401  (start-up: a torch-based merge pays this import)

BLOCK = 16 << 20


def weight_files(model_dir: Path) -> list[Path]:
    """As `_checkpoints.weight_files`, which this does not import (it imports transformers)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return sorted({model_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
    return [model_dir / "model.safetensors"]


def _pass(src: Path, buffer: memoryview, dst: Path | None) -> None:
    with open(src, "rb", buffering=0) as f:
        out = open(dst, "wb", buffering=0) if dst is not None else None  # noqa: SIM115
        try:
            while n := f.readinto(buffer):
                if out is not None:
                    out.write(buffer[:n])
        finally:
            if out is not None:
                out.close()


def io_pass(out_dir: Path, inputs: list[Path]) -> None:
    out_dir.mkdir(parents=True, exist_ok=False)
    buffer = memoryview(bytearray(BLOCK))
    index = inputs[0] / "model.safetensors.index.json"
    if index.is_file():
        (out_dir / index.name).write_bytes(index.read_bytes())
    for model in inputs[1:]:
        for f in weight_files(model):
            _pass(f, buffer, None)
    for f in weight_files(inputs[0]):
        _pass(f, buffer, out_dir / f.name)


if __name__ == "__main__":
    io_pass(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
