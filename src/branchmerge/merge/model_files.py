"""Everything in the output folder besides the weights: config, generation config, tokenizer, model card.

The model card records the exact YAML and the sha256 of every input weight file, so a merged model can be
traced back to the bytes it was made from. Hashing 2.4 GB of inputs costs a core for over a second, so a digest
is remembered per (file, size, modification time, inode) in `$XDG_CACHE_HOME/branchmerge/sha256/` (else
`~/.cache/...`): a second merge of the same inputs (another method, a merge search, the demo's merges of the same
experts) reads the digest instead of the file. The key is the test `inputs_unchanged` and make use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from branchmerge.merge.config import MergeConfig

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


def sha256_file(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    """The file's sha256, read into one reused buffer (a fresh block per read costs a page fault per 4 kB: a
    fifth of the hashing time for a 1.2 GB checkpoint). hashlib releases the GIL while it hashes a block."""
    h = hashlib.sha256()
    buffer = memoryview(bytearray(chunk))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            h.update(buffer[:n])
    return h.hexdigest()


def digest_cache_dir() -> Path:
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "branchmerge" / "sha256"


def cached_sha256(path: Path, cache_dir: Path | None = None) -> str:
    """`sha256_file(path)`, remembered under `cache_dir` (default `digest_cache_dir()`) for the file's current
    (resolved path, size, mtime in ns, inode, device); a cache that cannot be written only costs the reuse."""
    st = path.stat()
    key = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_dev}"
    entry = (cache_dir or digest_cache_dir()) / hashlib.sha256(key.encode()).hexdigest()
    try:
        digest = entry.read_text(encoding="ascii").strip()
        if len(digest) == 64:
            return digest
    except (OSError, UnicodeDecodeError):
        pass
    digest = sha256_file(path)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
        tmp.write_text(digest + "\n", encoding="ascii")
        tmp.replace(entry)  # atomic: a concurrent reader sees no digest or the whole one
    except OSError:
        pass
    return digest


FINGERPRINTS = "merge_inputs.json"


def _fingerprints(files: list[Path]) -> dict[str, list[int]]:
    """(size, mtime in ns) of each file: what a rerun compares to tell whether an input changed."""
    out = {}
    for f in files:
        st = f.stat()
        out[str(f.resolve())] = [st.st_size, st.st_mtime_ns]
    return out


def write_fingerprints(out_dir: Path, files: list[Path]) -> None:
    """Record the inputs' weight files (size, mtime) next to the merge, for `inputs_unchanged`."""
    (out_dir / FINGERPRINTS).write_text(json.dumps(_fingerprints(files), indent=1) + "\n", encoding="utf-8")


def inputs_unchanged(out_dir: Path, files: list[Path]) -> bool:
    """Whether `out_dir` was merged from exactly these files, none of them rewritten since (same size and
    modification time, the test make and rsync use; the sha256 in the model card is the exact record)."""
    try:
        recorded = json.loads((out_dir / FINGERPRINTS).read_text(encoding="utf-8"))
        return bool(recorded == _fingerprints(files))
    except (OSError, ValueError):
        return False


def write_config(src_dir: Path, out_dir: Path, dtype_name: str | None) -> None:
    """Copy config.json, recording the output dtype under `dtype` (and `torch_dtype` if the file uses it)."""
    config = json.loads((src_dir / "config.json").read_text(encoding="utf-8"))
    if dtype_name is not None:
        config["dtype"] = dtype_name
        if "torch_dtype" in config:
            config["torch_dtype"] = dtype_name
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def copy_support_files(config_dir: Path, tokenizer_dir: Path, out_dir: Path) -> list[str]:
    """Copy generation_config.json and the tokenizer files that exist; returns the names copied."""
    copied = []
    for src_dir, names in ((config_dir, ("generation_config.json",)), (tokenizer_dir, TOKENIZER_FILES)):
        for name in names:
            if (src_dir / name).is_file():
                shutil.copyfile(src_dir / name, out_dir / name)
                copied.append(name)
    return copied


@dataclass(frozen=True)
class SequenceCard:
    """What the model card of the last step of a sequence adds: the order, every step, the earlier inputs."""

    order: str
    step_yamls: list[str]
    earlier_hashes: Mapping[Path, str]


def write_model_card(
    out_dir: Path,
    config: MergeConfig,
    hashes: Mapping[Path, str],
    n_tensors: int,
    sequence: SequenceCard | None = None,
) -> None:
    """README.md with the merge config and the inputs' sha256; merge_config.yaml with the config alone.

    For a sequence, both hold every step (as YAML documents) and the card states the order of the merges.
    """
    yaml_text = config.to_yaml()
    order = ""
    if sequence is not None:
        yaml_text = "---\n".join(sequence.step_yamls)
        hashes = {**sequence.earlier_hashes, **hashes}
        order = f"\nMerged in this order (left operand = base_model): `{sequence.order}`\n"
    rows = "\n".join(f"| `{path}` | `{digest}` |" for path, digest in hashes.items())
    card = f"""---
library_name: transformers
tags:
- merge
- branchmerge
---
# Merged model

Made by `branchmerge merge` with the `{config.merge_method}` method ({n_tensors} tensors).
{order}
## Configuration

```yaml
{yaml_text.rstrip()}
```

## Input weights

| file | sha256 |
|---|---|
{rows}
"""
    (out_dir / "README.md").write_text(card, encoding="utf-8")
    (out_dir / "merge_config.yaml").write_text(yaml_text, encoding="utf-8")
