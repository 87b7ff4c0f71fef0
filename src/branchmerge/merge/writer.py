"""Writing the merged weights: shards planned up front, each written as soon as its last tensor arrives.

Shards are assigned before the merge starts (every output shape and dtype is known from the headers), so file
names can carry the final count (`model-00001-of-00003.safetensors`, the transformers layout) and a shard's
memory is released the moment it is on disk. A model that fits in one shard is one `model.safetensors`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from branchmerge.merge.checkpoint import INDEX_FILE, SINGLE_FILE

MAX_SHARD_BYTES = 2_000_000_000


def plan_shards(sizes: Sequence[tuple[str, int]], max_bytes: int = MAX_SHARD_BYTES) -> list[list[str]]:
    """Group (name, nbytes) in order into shards of at most `max_bytes` (a bigger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, nbytes in sizes:
        if shards[-1] and used + nbytes > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards


def shard_file_name(i: int, n: int) -> str:
    return SINGLE_FILE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


class ShardWriter:
    """Collects tensors shard by shard and writes each shard when complete; `finish` writes the index."""

    def __init__(self, out_dir: Path, shards: list[list[str]]):
        self.out_dir = out_dir
        self.shards = shards
        self._shard_of = {name: i for i, names in enumerate(shards) for name in names}
        self._pending: dict[int, dict[str, torch.Tensor]] = {}
        self._written: set[int] = set()
        self._total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        i = self._shard_of[name]
        buf = self._pending.setdefault(i, {})
        buf[name] = tensor.contiguous()
        if len(buf) == len(self.shards[i]):
            path = self.out_dir / shard_file_name(i, len(self.shards))
            save_file(buf, str(path), metadata={"format": "pt"})
            self._total_bytes += sum(t.numel() * t.element_size() for t in buf.values())
            del self._pending[i]
            self._written.add(i)

    def finish(self) -> None:
        missing = [name for i, names in enumerate(self.shards) if i not in self._written for name in names]
        if missing:
            raise RuntimeError(f"merge ended without writing {len(missing)} tensors, e.g. {missing[0]}")
        if len(self.shards) > 1:
            n = len(self.shards)
            index = {
                "metadata": {"total_size": self._total_bytes},
                "weight_map": {
                    name: shard_file_name(i, n) for i, names in enumerate(self.shards) for name in names
                },
            }
            (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
