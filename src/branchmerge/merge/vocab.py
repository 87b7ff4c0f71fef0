"""Merging models whose vocabularies differ: align token-indexed rows to the `tokenizer_source`'s vocabulary.

With a `tokenizer_source`, the output vocabulary is that tokenizer's (its `get_vocab()`, added tokens
included), and every vocabulary-indexed tensor (`embed_tokens`, `lm_head`) of every input is re-indexed to it by
token string before the method sees it, as mergekit 0.1.5 does:
  - a token the model has: that model's row (padding rows past a tokenizer's vocabulary are dropped);
  - a token it lacks: the row of the one model that has it, else the base_model's row, else the mean of the
    rows of the models that have it; zeros if no model has it.
So every input brings a row for every token; for methods that act row by row on equal inputs (linear,
TIES, ...) the merged row of a token only one model knows is that model's row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from branchmerge.errors import BranchmergeError

VOCAB_SUFFIXES = ("embed_tokens.weight", "lm_head.weight")


def is_vocab_tensor(name: str) -> bool:
    return name.endswith(VOCAB_SUFFIXES)


def load_vocab(folder: Path) -> dict[str, int]:
    """token -> id of the tokenizer saved in `folder` (tokenizer.json, added tokens included)."""
    path = folder / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
        except Exception as e:  # a corrupt or foreign file: name it
            raise BranchmergeError(f"{path}: cannot read the tokenizer ({e})") from None
    if (folder / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        return dict(AutoTokenizer.from_pretrained(folder).get_vocab())
    raise BranchmergeError(
        f"{folder}: no tokenizer.json; tokenizer_source needs every input's tokenizer to align vocabularies"
    )


def token_sources(
    out_vocab: dict[str, int], vocabs: Sequence[dict[str, int]], base: int | None
) -> torch.Tensor:
    """index[i, v] = row of model i for output token v, or -1 when model i lacks it (int64, [models, vocab])."""
    index = torch.full((len(vocabs), len(out_vocab)), -1, dtype=torch.int64)
    for i, vocab in enumerate(vocabs):
        for token, v in out_vocab.items():
            row = vocab.get(token)
            if row is not None:
                index[i, v] = row
    return index


def align_rows(tensors: Sequence[torch.Tensor], index: torch.Tensor, base: int | None) -> list[torch.Tensor]:
    """Each input re-indexed to the output vocabulary, missing rows filled as the module docstring says."""
    n_models, n_vocab = index.shape
    present = index >= 0
    for i, t in enumerate(tensors):
        if int(index[i].max()) >= t.shape[0]:
            raise BranchmergeError(
                f"input {i}: its tokenizer has ids up to {int(index[i].max())} but the tensor has {t.shape[0]} rows"
            )
    rows = [torch.where(present[i, :, None], t[index[i].clamp(min=0)], 0) for i, t in enumerate(tensors)]
    count = present.sum(dim=0)
    missing = (~present).any(dim=0).nonzero().flatten()
    for v in missing.tolist():
        has = present[:, v].nonzero().flatten().tolist()
        if not has:
            fill = torch.zeros_like(rows[0][v])
        elif len(has) == 1:
            fill = rows[has[0]][v]
        elif base is not None and present[base, v]:
            fill = rows[base][v]
        else:
            fill = torch.stack([rows[i][v].float() for i in has]).sum(0).div(int(count[v])).to(rows[0].dtype)
        for i in range(n_models):
            if not present[i, v]:
                rows[i][v] = fill
    return rows


def vocab_size_problem(folders: Sequence[Path], tokenizer_dir: Path) -> str | None:
    """Why vocabularies cannot be aligned (a folder without a tokenizer), or None."""
    for f in [*folders, tokenizer_dir]:
        if not (f / "tokenizer.json").is_file() and not (f / "tokenizer_config.json").is_file():
            return (
                f"{f}: has no tokenizer; tokenizer_source needs every input's tokenizer to align vocabularies"
            )
    return None


def set_vocab_size(config_path: Path, size: int) -> None:
    config = json.loads(config_path.read_text(encoding="utf-8"))
    target = config["text_config"] if "vocab_size" not in config and "text_config" in config else config
    target["vocab_size"] = size
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
