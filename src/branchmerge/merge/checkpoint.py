"""Reading model folders: config.json plus safetensors weights, one file or shards with an index.

`Checkpoint.open` reads only headers (names, shapes, dtypes), which is all the validation needs;
`TensorReader` reads one tensor at a time, so a merge holds one tensor per model in memory, never a model.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from safetensors import safe_open

from branchmerge.errors import BranchmergeError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# safetensors header dtype names -> torch dtypes (the float ones a merge can compute with).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}


def safetensors_dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in SAFETENSORS_DTYPES.items() if d == dtype)


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
    if (path / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError):
            return f"{INDEX_FILE} is not a valid index (needs a 'weight_map')"
        missing = sorted({f for f in weight_map.values() if not (path / f).is_file()})
        return f"shard listed in {INDEX_FILE} is missing: {missing[0]}" if missing else None
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        return "has only PyTorch .bin weights; only safetensors are supported (convert with save_pretrained)"
    return f"has no {SINGLE_FILE} or {INDEX_FILE}"


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
        else:
            weight_map = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
            files = {path / f: None for f in weight_map.values()}  # ordered, deduplicated
        tensors: dict[str, TensorInfo] = {}
        for file in files:
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


class TensorReader:
    """Reads tensors from several checkpoints through safetensors handles opened once per file.

    Use from one thread at a time (the engine's read-ahead thread); close with the context manager.
    """

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._handles: dict[Path, Any] = {}

    def read(self, ckpt: Checkpoint, name: str) -> torch.Tensor:
        file = ckpt.tensors[name].file
        handle = self._handles.get(file)
        if handle is None:
            handle = self._stack.enter_context(safe_open(file, framework="pt"))
            self._handles[file] = handle
        return handle.get_tensor(name)

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._handles.clear()
        self._stack.close()
