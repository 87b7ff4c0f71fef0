"""Off-domain forgetting: an expert's held-out loss on every domain beside its base's, in `offdomain_loss.json`.

After training an expert, measure the base once and each expert on the same held-out SFT examples (one JSONL
with a `domain` per example), and write the file into the expert's folder:

    base_losses = domain_losses(base_dir, "heldout.jsonl")
    measure_offdomain_loss(expert_dir, "add", "heldout.jsonl", base_losses=base_losses)

`merge.mergeability` reads it: an expert whose loss on the *other* domains rose well above the base's forgot
them, and in the demo's variants that, more than the size of its weight change, predicted a failed merge.
The loss is `search_score.assistant_loss`: the mean next-token loss over the assistant tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from branchmerge.errors import BranchmergeError, validation_error
from branchmerge.records import OffDomainLoss, SFTExample, atomic_write_text, read_jsonl

OFFDOMAIN_FILE = "offdomain_loss.json"

Examples = Mapping[str, Sequence[SFTExample]] | str | Path


def _by_domain(examples: Examples) -> dict[str, list[SFTExample]]:
    if isinstance(examples, str | Path):
        rows = read_jsonl(examples, SFTExample)
        if not rows:
            raise BranchmergeError(f"{examples}: has no examples")
        out: dict[str, list[SFTExample]] = {}
        for e in rows:
            out.setdefault(e.domain, []).append(e)
        return dict(sorted(out.items()))
    return {d: list(rows) for d, rows in examples.items()}


def domain_losses(
    model_dir: str | Path, examples: Examples, *, batch_size: int = 8, device: str | None = None
) -> dict[str, float]:
    """Mean assistant-token loss of the model per domain: `examples` is an SFT JSONL (grouped by its `domain`
    field) or a mapping domain -> examples."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from branchmerge.merge.search_score import assistant_loss, encode_examples

    groups = _by_domain(examples)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.to(device or "cpu").eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {
        d: assistant_loss(
            model, encode_examples(tokenizer, rows, f"{examples}: domain {d}"), batch_size, pad_id
        )
        for d, rows in groups.items()
    }


def measure_offdomain_loss(
    expert_dir: str | Path,
    domain: str,
    examples: Examples,
    *,
    base_dir: str | Path | None = None,
    base_losses: Mapping[str, float] | None = None,
    batch_size: int = 8,
    device: str | None = None,
    out_dir: str | Path | None = None,
) -> OffDomainLoss:
    """Measure the expert (and the base, unless `base_losses` are given) and write `offdomain_loss.json` into
    `out_dir` (default: the expert's own folder, where `mergeability` looks for it)."""
    if base_losses is None:
        if base_dir is None:
            raise BranchmergeError("measure_offdomain_loss: give base_dir or base_losses")
        base_losses = domain_losses(base_dir, examples, batch_size=batch_size, device=device)
    groups = _by_domain(examples)
    expert = domain_losses(expert_dir, groups, batch_size=batch_size, device=device)
    record = OffDomainLoss(
        domain=domain,
        expert=expert,
        base=dict(base_losses),
        examples={d: len(rows) for d, rows in groups.items()},
    )
    write_offdomain_loss(out_dir if out_dir is not None else expert_dir, record)
    return record


def write_offdomain_loss(expert_dir: str | Path, record: OffDomainLoss) -> Path:
    path = Path(expert_dir) / OFFDOMAIN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, record.model_dump_json(indent=1) + "\n")
    return path


def read_offdomain_loss(expert_dir: str | Path) -> OffDomainLoss | None:
    """The expert's `offdomain_loss.json`, or None when training did not write one."""
    path = Path(expert_dir) / OFFDOMAIN_FILE
    if not path.is_file():
        return None
    try:
        return OffDomainLoss.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as e:
        raise validation_error(str(path), e) from None


def forgetting(record: OffDomainLoss) -> float | None:
    """Mean relative rise of the loss on the other domains, (L_expert - L_base) / L_base; None without any."""
    others = [d for d in record.expert if d != record.domain and d in record.base and record.base[d] > 0]
    if not others:
        return None
    return sum((record.expert[d] - record.base[d]) / record.base[d] for d in others) / len(others)
