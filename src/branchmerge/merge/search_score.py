"""Scores of one model folder per domain, for merge search: held-out assistant-token loss, or quick accuracy.

The loss is the one SFT minimises: labels keep only the tokens the chat template marks as generated
(`return_assistant_tokens_mask=True`, as TRL's `assistant_only_loss` does), and a domain's score is the
token-weighted mean negative log-likelihood over its dev examples (sum of token losses / assistant tokens).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from branchmerge.errors import BranchmergeError
from branchmerge.merge.search_spec import EvalObjective, LossObjective
from branchmerge.records import Problem, SFTExample

IGNORE = -100
DevData = Mapping[str, Sequence[SFTExample]] | Mapping[str, Sequence[Problem]]


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[SFTExample], where: str
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per example, labels = IGNORE outside the assistant turns.

    A template without `{% generation %}` markers gives an all-zero mask, i.e. a loss over nothing: refuse it.
    """
    out = []
    for ex in examples:
        enc: Any = tokenizer.apply_chat_template(
            ex.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = list(enc["input_ids"])
        out.append((ids, [t if m else IGNORE for t, m in zip(ids, enc["assistant_masks"], strict=True)]))
    if out and all(lab == IGNORE for _, labels in out for lab in labels):
        raise BranchmergeError(
            f"{where}: the chat template marks no assistant tokens (it needs {{% generation %}} blocks), "
            "so there is no loss to measure; use a tokenizer whose template has them, or kind: eval"
        )
    return out


def _batches(
    encoded: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Right-padded (input_ids, attention_mask, labels) batches of similar lengths."""
    encoded = sorted(encoded, key=lambda e: len(e[0]))
    out = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        for i, (row_ids, row_labels) in enumerate(chunk):
            ids[i, : len(row_ids)] = torch.tensor(row_ids)
            mask[i, : len(row_ids)] = 1
            labels[i, : len(row_labels)] = torch.tensor(row_labels)
        out.append((ids, mask, labels))
    return out


@torch.no_grad()
def assistant_loss(
    model: torch.nn.Module, encoded: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int
) -> float:
    """Token-weighted mean next-token loss over the assistant tokens of `encoded`."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for ids, mask, labels in _batches(encoded, batch_size, pad_id):
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        # position p predicts token p + 1
        target = labels[:, 1:].to(device)
        nll = F.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), target.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        total += float(nll)
        count += int((target != IGNORE).sum())
    return total / count


def _device(requested: str | None) -> str:
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def _loss_scores(model_dir: Path, objective: LossObjective, data: DevData) -> dict[str, float]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    model.to(_device(objective.device)).eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores = {}
    for domain, examples in data.items():
        encoded = encode_examples(tokenizer, examples, f"{model_dir}: objective.dev.{domain}")  # type: ignore[arg-type]
        scores[domain] = assistant_loss(model, encoded, objective.batch_size, pad_id)
    del model
    return scores


def _eval_scores(
    model_dir: Path, objective: EvalObjective, data: DevData, work_dir: Path
) -> dict[str, float]:
    from branchmerge.evaluate import evaluate_model

    scores = {}
    work_dir.mkdir(parents=True, exist_ok=True)
    for domain, problems in data.items():
        samples_file = work_dir / f"eval-{domain}.jsonl"
        samples_file.unlink(missing_ok=True)  # a fresh evaluation, never a resumed one of other weights
        samples = evaluate_model(
            model_dir,
            list(problems),  # type: ignore[arg-type]
            samples_file,
            max_tokens=objective.max_tokens,
            batch_size=objective.batch_size,
            show_progress=False,
        )
        scores[domain] = sum(s.passed for s in samples) / len(samples)
    return scores


def score_model(
    model_dir: str | Path, objective: LossObjective | EvalObjective, data: DevData, work_dir: str | Path
) -> dict[str, float]:
    """One score per domain of `data`; `work_dir` holds the eval objective's sample files."""
    if isinstance(objective, LossObjective):
        return _loss_scores(Path(model_dir), objective, data)
    return _eval_scores(Path(model_dir), objective, data, Path(work_dir))
