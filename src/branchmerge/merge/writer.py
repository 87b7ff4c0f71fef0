"""Writing the merged weights: safetensors shards streamed to disk one tensor at a time.

Every output name, shape and dtype is known from the plan before the first tensor is computed, so each shard's
header (names, dtypes, shapes, byte offsets) is written first and each tensor's bytes are appended the moment it
is merged. Nothing waits for a shard to fill up in memory: peak memory is a few tensors whatever the shard or
model size. (safetensors' own `save_file` needs the whole shard as a dict of tensors.) Shard file names carry the
final count (`model-00001-of-00003.safetensors`, the transformers layout); a model that fits in one shard is one
`model.safetensors`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import torch

from branchmerge.merge.checkpoint import INDEX_FILE, SINGLE_FILE, safetensors_dtype_name

MAX_SHARD_BYTES = 2_000_000_000

TensorSpec = tuple[str, tuple[int, ...], torch.dtype]  # (name, shape, dtype)


def nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    numel = 1
    for d in shape:
        numel *= d
    return numel * dtype.itemsize


def plan_shards(sizes: Sequence[tuple[str, int]], max_bytes: int = MAX_SHARD_BYTES) -> list[list[str]]:
    """Group (name, nbytes) in order into shards of at most `max_bytes` (a bigger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes:
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def shard_file_name(i: int, n: int) -> str:
    return SINGLE_FILE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def safetensors_header(specs: Sequence[TensorSpec]) -> bytes:
    """The 8-byte little-endian length + JSON header of a safetensors file holding `specs` in this order.

    The JSON is padded with spaces to a multiple of 8 bytes so the data that follows stays aligned.
    """
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in specs:
        size = nbytes(shape, dtype)
        header[name] = {
            "dtype": safetensors_dtype_name(dtype),
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


class ShardWriter:
    """Streams tensors, in plan order, into pre-planned shards; `finish` checks completeness, writes the index.

    Not thread-safe: the engine calls it from its one writer thread.
    """

    def __init__(self, out_dir: Path, specs: Sequence[TensorSpec], max_shard_bytes: int = MAX_SHARD_BYTES):
        self.out_dir = out_dir
        self._specs = {name: (shape, dtype) for name, shape, dtype in specs}
        self.shards = plan_shards([(n, nbytes(s, d)) for n, s, d in specs], max_shard_bytes)
        self._order = [name for shard in self.shards for name in shard]
        self._starts = {shard[0]: i for i, shard in enumerate(self.shards) if shard}
        self._next = 0  # index in _order of the tensor expected next
        self._shard = -1
        self._file: BinaryIO | None = None
        self.total_bytes = sum(nbytes(s, d) for s, d in self._specs.values())

    def _open_shard(self, i: int) -> None:
        self._close()
        path = self.out_dir / shard_file_name(i, len(self.shards))
        self._file = open(path, "wb")  # noqa: SIM115 (kept open across add() calls, closed in _close)
        self._file.write(safetensors_header([(n, *self._specs[n]) for n in self.shards[i]]))
        self._shard = i

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def add(self, name: str, tensor: torch.Tensor) -> None:
        shape, dtype = self._specs.get(name, (None, None))
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise RuntimeError(
                f"merge writer: '{name}' is {tensor.dtype} {list(tensor.shape)}, planned {dtype} {list(shape or [])}"
            )
        stream = self.stream(name)
        stream.write(tensor)
        stream.close()

    def stream(self, name: str) -> TensorStream:
        """Start writing the next tensor in pieces (flattened, in order): `write` each, then `close`."""
        expected = self._order[self._next]
        if name != expected:
            raise RuntimeError(f"merge writer expected tensor '{expected}' next, got '{name}'")
        if name in self._starts:
            self._open_shard(self._starts[name])
        assert self._file is not None
        shape, dtype = self._specs[name]
        return TensorStream(self, name, dtype, nbytes(shape, dtype))

    def _write(self, data: torch.Tensor) -> None:
        assert self._file is not None
        self._file.write(data.numpy().data)

    def _done(self) -> None:
        self._next += 1

    def finish(self) -> None:
        self._close()
        if self._next != len(self._order):
            missing = self._order[self._next :]
            raise RuntimeError(f"merge ended without writing {len(missing)} tensors, e.g. {missing[0]}")
        if len(self.shards) > 1:
            n = len(self.shards)
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": {
                    name: shard_file_name(i, n) for i, names in enumerate(self.shards) for name in names
                },
            }
            (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")

    def abort(self) -> None:
        self._close()


class TensorStream:
    """One tensor being written in pieces; `close` checks that exactly its planned bytes were written."""

    def __init__(self, writer: ShardWriter, name: str, dtype: torch.dtype, size: int):
        self.writer, self.name, self.dtype, self.size = writer, name, dtype, size
        self.written = 0

    def write(self, part: torch.Tensor) -> None:
        if part.dtype != self.dtype:
            raise RuntimeError(
                f"merge writer: a piece of '{self.name}' is {part.dtype}, planned {self.dtype}"
            )
        data = part.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        if self.written + data.numel() > self.size:
            raise RuntimeError(f"merge writer: '{self.name}' got more than its {self.size} bytes")
        self.writer._write(data)
        self.written += data.numel()

    def close(self) -> None:
        if self.written != self.size:
            raise RuntimeError(f"merge writer: '{self.name}' got {self.written} of its {self.size} bytes")
        self.writer._done()
