"""The model card's input digests: cached per file state, never stale, and the same as hashing the file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from branchmerge.merge.model_files import cached_sha256


def test_digest_is_cached_and_follows_the_file(tmp_path: Path) -> None:
    cache, f = tmp_path / "cache", tmp_path / "w.safetensors"
    f.write_bytes(b"abc" * 1000)
    expected = hashlib.sha256(b"abc" * 1000).hexdigest()
    assert cached_sha256(f, cache) == expected
    (entry,) = list(cache.iterdir())
    # the second call reads the entry, not the file: prove it by planting a different digest there
    entry.write_text("f" * 64 + "\n")
    assert cached_sha256(f, cache) == "f" * 64
    # rewriting the file (new size and mtime) makes a new key: the planted entry is not used
    f.write_bytes(b"abcd" * 1000)
    os.utime(f, ns=(1, 2))
    assert cached_sha256(f, cache) == hashlib.sha256(b"abcd" * 1000).hexdigest()


def test_a_damaged_entry_is_rehashed(tmp_path: Path) -> None:
    cache, f = tmp_path / "cache", tmp_path / "w.bin"
    f.write_bytes(b"x")
    cached_sha256(f, cache)
    (entry,) = list(cache.iterdir())
    entry.write_text("not a digest")
    assert cached_sha256(f, cache) == hashlib.sha256(b"x").hexdigest()


def test_an_unwritable_cache_still_hashes(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    f = tmp_path / "w.bin"
    f.write_bytes(b"y")
    assert cached_sha256(f, blocker / "sha256") == hashlib.sha256(b"y").hexdigest()
