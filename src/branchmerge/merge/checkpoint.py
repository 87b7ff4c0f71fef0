"""Reading model folders: config.json plus safetensors weights (one file or shards with an index), or PyTorch
`.bin` weights loaded memory-mapped with `weights_only=True`.

`Checkpoint.open` reads only headers (names, shapes, dtypes), which is all the validation needs;
`TensorReader` reads one tensor at a time, so a merge holds one tensor per model in memory, never a model.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from safetensors import safe_open

from branchmerge.errors import BranchmergeError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX_FILE = "pytorch_model.bin.index.json"

# safetensors header dtype names -> torch dtypes (the float ones a merge can compute with).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}


def safetensors_dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in SAFETENSORS_DTYPES.items() if d == dtype)


def _dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a float dtype, else torch's own name (the plan reports it as unmergeable)."""
    return next((name for name, d in SAFETENSORS_DTYPES.items() if d == dtype), str(dtype))


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # safetensors name, e.g. "BF16"
    file: Path


def folder_problem(path: Path) -> str | None:
    """Why `path` is not a usable model folder, or None. Cheap: looks at file names only."""
    if not path.is_dir():
        return "model folder not found" if not path.exists() else "not a folder"
    if not (path / "config.json").is_file():
        return "has no config.json"
    if (path / SINGLE_FILE).is_file():
        return None
    for index_file in (INDEX_FILE, BIN_INDEX_FILE):
        if (path / index_file).is_file():
            try:
                weight_map = json.loads((path / index_file).read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError, TypeError):
                return f"{index_file} is not a valid index (needs a 'weight_map')"
            missing = sorted({f for f in weight_map.values() if not (path / f).is_file()})
            return f"shard listed in {index_file} is missing: {missing[0]}" if missing else None
    if (path / BIN_FILE).is_file():
        return None
    return f"has no {SINGLE_FILE}, {INDEX_FILE}, {BIN_FILE} or {BIN_INDEX_FILE}"


def load_pickled(file: Path) -> dict[str, torch.Tensor]:
    """A PyTorch .bin state dict, memory-mapped, with `weights_only=True`: tensors and plain containers only, so
    a pickle that would run code is refused instead of executed."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # UnpicklingError for unsafe content, RuntimeError for legacy or corrupt files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BranchmergeError(
            f"{file}: refused or unreadable with weights_only=True ({first}); convert it to safetensors"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BranchmergeError(f"{file}: not a state dict of tensors")
    return state


class Checkpoint:
    """A model folder's config and tensor headers. Create with `Checkpoint.open` after `folder_problem`."""

    def __init__(
        self,
        path: Path,
        config: dict[str, Any],
        tensors: dict[str, TensorInfo],
        tokenizer_dir: Path | None = None,
    ):
        self.path = path
        self.config = config
        self.tensors = tensors
        self.tokenizer_dir = (
            tokenizer_dir  # for a stand-in of a future merge output: where its tokenizer comes from
        )

    @classmethod
    def open(cls, path: str | Path) -> Checkpoint:
        path = Path(path)
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except ValueError as e:
            raise BranchmergeError(f"{path / 'config.json'}: not valid JSON ({e})") from None
        if (path / SINGLE_FILE).is_file():
            files = {path / SINGLE_FILE: None}
        elif (path / INDEX_FILE).is_file():
            weight_map = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
            files = {path / f: None for f in weight_map.values()}  # ordered, deduplicated
        elif (path / BIN_INDEX_FILE).is_file():
            weight_map = json.loads((path / BIN_INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
            files = {path / f: None for f in weight_map.values()}
        else:
            files = {path / BIN_FILE: None}
        tensors: dict[str, TensorInfo] = {}
        for file in files:
            if file.suffix == ".bin":
                for name, t in load_pickled(file).items():
                    tensors[name] = TensorInfo(tuple(t.shape), _dtype_name(t.dtype), file)
                continue
            try:
                with safe_open(file, framework="pt") as f:
                    for name in f.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                        sl = f.get_slice(name)
                        tensors[name] = TensorInfo(tuple(sl.get_shape()), sl.get_dtype(), file)
            except Exception as e:  # a truncated or foreign file: say which one
                raise BranchmergeError(f"{file}: cannot read safetensors header ({e})") from None
        return cls(path, config, tensors)

    @property
    def num_layers(self) -> int | None:
        """num_hidden_layers from config.json (or its text_config, for multimodal configs)."""
        n = self.config.get("num_hidden_layers")
        if n is None and isinstance(self.config.get("text_config"), dict):
            n = self.config["text_config"].get("num_hidden_layers")
        return int(n) if n is not None else None

    @property
    def weight_files(self) -> list[Path]:
        return sorted({info.file for info in self.tensors.values()})


class _SafetensorsFile:
    """One safetensors file read with `pread` into fresh buffers.

    safetensors' `safe_open` memory-maps the file and copies each tensor out of the mapping; every page it
    touches stays mapped, and so counts in the process's resident memory, until the handle closes, so a
    merge that keeps handles open shows all of its inputs as RSS by the end (3.8 GB for a TIES of three
    1.2 GB models, measured with benchmarks/merge_bench.py). Reading with `preadv` straight into the tensor's
    own buffer costs the same copy and leaves nothing mapped, so RSS stays the tensors in flight.
    The format is an 8-byte little-endian header length, a JSON header, then the tensors' bytes.
    """

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        try:
            (length,) = struct.unpack("<Q", os.pread(self.fd, 8, 0))
            self.header = json.loads(os.pread(self.fd, length, 8))
        except (struct.error, ValueError) as e:
            os.close(self.fd)
            raise BranchmergeError(f"{path}: cannot read safetensors header ({e})") from None
        self.data_start = 8 + length

    def read(self, name: str, first: int = 0, count: int | None = None) -> torch.Tensor:
        """The tensor, or with `count` the elements [first, first + count) of its flattened form (1-D)."""
        entry = self.header[name]
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        start, end = entry["data_offsets"]
        if count is not None:
            size = dtype.itemsize
            start, end = start + first * size, start + (first + count) * size
        buffer = torch.empty(end - start, dtype=torch.uint8)
        view, done = buffer.numpy().data, 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], self.data_start + start + done)
            if got == 0:
                raise BranchmergeError(f"{self.path}: file ends inside tensor {name} (truncated?)")
            done += got
        return buffer.view(dtype) if count is not None else buffer.view(dtype).reshape(entry["shape"])

    def close(self) -> None:
        os.close(self.fd)


class LazyTensor:
    """A flattened tensor left on disk: indexing reads just those elements (`pread`), converts them to
    `dtype` and moves them to `device`. The engine hands these to chunked methods for the largest tensors
    (the embedding), so their inputs never sit in memory whole; see `methods/chunks.py`."""

    def __init__(self, file: _SafetensorsFile, name: str, dtype: torch.dtype, device: torch.device):
        self.file, self.name, self.dtype, self.device = file, name, dtype, device
        self.shape = torch.Size(file.header[name]["shape"])
        self.stored_dtype = SAFETENSORS_DTYPES[file.header[name]["dtype"]]

    def numel(self) -> int:
        return self.shape.numel()

    def reshape(self, *shape: int) -> LazyTensor:
        if shape != (-1,):
            raise ValueError("a LazyTensor only has its flattened form")
        return self

    def __getitem__(self, index: slice | torch.Tensor) -> torch.Tensor:
        if isinstance(index, slice):
            first, stop, step = index.indices(self.numel())
            assert step == 1, "contiguous ranges only"
            part = self.file.read(self.name, first, max(stop - first, 0))
        else:  # positions (a sample): read the blocks that hold them, one at a time
            part = torch.empty(index.numel(), dtype=self.stored_dtype)
            order = index.argsort()
            sorted_index = index[order]
            block = 1 << 20
            for lo in range(0, self.numel(), block):
                sel = (sorted_index >= lo) & (sorted_index < lo + block)
                if sel.any():
                    chunk = self.file.read(self.name, lo, min(block, self.numel() - lo))
                    part[order[sel]] = chunk[sorted_index[sel] - lo]
        return part.to(self.dtype).to(self.device)


class TensorReader:
    """Reads tensors from several checkpoints, each file opened once (`_SafetensorsFile`; `.bin` files are
    memory-mapped by torch).

    Use from one thread at a time (the engine's read-ahead thread); close with the context manager.
    """

    def __init__(self) -> None:
        self._handles: dict[Path, _SafetensorsFile | dict[str, torch.Tensor]] = {}

    def _handle(self, file: Path) -> _SafetensorsFile | dict[str, torch.Tensor]:
        """The file's handle, opened on first use (.bin: memory-mapped, tensors paged in as they are used)."""
        handle = self._handles.get(file)
        if handle is None:
            handle = load_pickled(file) if file.suffix == ".bin" else _SafetensorsFile(file)
            self._handles[file] = handle
        return handle

    def read(self, ckpt: Checkpoint, name: str) -> torch.Tensor:
        handle = self._handle(ckpt.tensors[name].file)
        if isinstance(handle, dict):
            return handle[name].clone()
        return handle.read(name)

    def lazy(
        self, ckpt: Checkpoint, name: str, dtype: torch.dtype | None, device: torch.device
    ) -> LazyTensor:
        """A safetensors tensor as a LazyTensor, read in `dtype` (else its own) onto `device`."""
        handle = self._handle(ckpt.tensors[name].file)
        assert isinstance(handle, _SafetensorsFile), "only safetensors files are read lazily"
        return LazyTensor(handle, name, dtype or SAFETENSORS_DTYPES[handle.header[name]["dtype"]], device)

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles.values():
            if isinstance(handle, _SafetensorsFile):
                handle.close()
        self._handles.clear()
