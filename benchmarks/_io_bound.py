"""The IO bound of a merge: read every tensor of every input, write one model's worth of tensors. No math.

    python benchmarks/_io_bound.py OUT_DIR INPUT_DIR [INPUT_DIR ...]

Reads tensor by tensor in the first input's order through `safe_open` (as a streaming merge does), keeps the
first input's copy, and writes it in the first input's shard layout with safetensors' `save_file`, each shard
as soon as it is complete. Imports only torch and safetensors, so its start-up is the least a Python merge
can have. Run as a subprocess by merge_bench.py, which times it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file


def _layout(model_dir: Path) -> dict[str, list[str]]:
    """Shard file name -> tensor names, in file order."""
    index = model_dir / "model.safetensors.index.json"
    if not index.is_file():
        with safe_open(model_dir / "model.safetensors", framework="pt") as f:
            return {"model.safetensors": list(f.keys())}
    shards: dict[str, list[str]] = {}
    for name, file in json.loads(index.read_text())["weight_map"].items():
        shards.setdefault(file, []).append(name)
    return shards


def _file_of(model_dir: Path) -> dict[str, Path]:
    return {n: model_dir / file for file, names in _layout(model_dir).items() for n in names}


def io_pass(out_dir: Path, inputs: list[Path]) -> None:
    out_dir.mkdir(parents=True, exist_ok=False)
    files = [_file_of(m) for m in inputs]
    handles = {f: safe_open(f, framework="pt") for index in files for f in set(index.values())}
    for shard, names in _layout(inputs[0]).items():
        out = {}
        for name in names:
            tensors = [handles[index[name]].get_tensor(name) for index in files]
            out[name] = tensors[0]
            del tensors
        save_file(out, str(out_dir / shard), metadata={"format": "pt"})
        del out


if __name__ == "__main__":
    io_pass(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
