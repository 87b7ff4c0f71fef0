"""The statistics the data-aware merges read from a model run on its own calibration examples.

- `gram_statistics` (RegMean, `methods/regmean.py`): for every nn.Linear, G = X^T X / N over the N non-padding
  tokens of the examples, X being the layer's inputs (a forward hook sees them). Accumulated in fp32 on the
  model's device: all of a model's Gram matrices are held at once (Qwen3-4B: about 18 GB, most of it down_proj's
  9728 x 9728 per layer), so large models want `--device cuda`. With `stop_early` the forward pass of a batch
  ends as soon as every hooked layer has seen it: the sequential variant (`calibration_sequential.py`) hooks
  one decoder layer at a time and needs nothing after it.
- `fisher_statistics` (Fisher averaging, `methods/fisher.py`): for every parameter, the mean over examples of the
  squared gradient of log p(y | x), the log-likelihood of the example's assistant tokens given everything
  before them (the labels SFT trains on). One backward per example: the empirical Fisher squares per-example
  gradients, which a batch gradient would not give. So it costs one forward and backward per example.

Both take examples already encoded as (input_ids, labels) with labels = IGNORE outside the assistant turns
(`search_score.encode_examples`), and return fp32 tensors keyed by the checkpoint's tensor names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # the label of tokens outside the assistant turns (as in `search_score`)
Encoded = Sequence[tuple[list[int], list[int]]]


class _Stop(Exception):  # noqa: N818 (not an error: ends a forward pass whose remaining layers are not needed)
    pass


def _padded(batch: Encoded, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input_ids and the attention mask of a batch."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (row, _) in enumerate(batch):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


@torch.no_grad()
def gram_statistics(
    model: nn.Module,
    encoded: Encoded,
    names: Collection[str],
    *,
    batch_size: int = 8,
    pad_id: int = 0,
    advance: Callable[[int], Any] = lambda n: None,
    stop_early: bool = False,
) -> tuple[dict[str, torch.Tensor], int]:
    """({"<module>.weight": X^T X / N} for every nn.Linear whose weight is in `names`, N tokens).

    `names` are the checkpoint's tensor names: a tied lm_head (its weight stored as the embedding) is left out.
    `stop_early`: end each forward pass once every hooked layer has run on the batch (each runs once per pass).
    """
    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    keep = torch.zeros(0, dtype=torch.bool)  # the current batch's non-padding positions, flattened
    hooks = []
    seen: set[str] = set()  # hooked layers the current batch has reached

    def hook(name: str) -> Callable[..., None]:
        def accumulate(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1])[keep].float()  # tokens x d_in
            sums[name] += x.T @ x
            if stop_early:
                seen.add(name)
                if len(seen) == len(sums):
                    raise _Stop

        return accumulate

    for module_name, module in model.named_modules():
        name = f"{module_name}.weight"
        if isinstance(module, nn.Linear) and name in names:
            d_in = module.in_features
            sums[name] = torch.zeros(d_in, d_in, dtype=torch.float32, device=device)
            hooks.append(module.register_forward_pre_hook(hook(name)))
    tokens = 0
    try:
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # similar lengths per batch
        for start in range(0, len(order), batch_size):
            batch = [encoded[i] for i in order[start : start + batch_size]]
            ids, mask = _padded(batch, pad_id)
            keep = mask.reshape(-1).bool().to(device)
            tokens += int(mask.sum())
            seen.clear()
            with contextlib.suppress(_Stop):
                model(input_ids=ids.to(device), attention_mask=mask.to(device))
            advance(len(batch))
    finally:
        for h in hooks:
            h.remove()
    return {name: (s / tokens).cpu() for name, s in sums.items()}, tokens


def fisher_statistics(
    model: nn.Module,
    encoded: Encoded,
    names: Collection[str],
    *,
    advance: Callable[[int], Any] = lambda n: None,
) -> dict[str, torch.Tensor]:
    """{parameter name: mean over examples of (d log p(y | x) / d theta)^2} for the parameters in `names`."""
    device = next(model.parameters()).device
    params = {n: p for n, p in model.named_parameters() if n in names}  # tied weights appear once
    wanted = {id(p) for p in params.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    F_sum = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    for ids, labels in encoded:
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0]
        target = torch.tensor(labels[1:], device=device)  # position p predicts token p + 1
        log_p = -F.cross_entropy(logits[:-1].float(), target, ignore_index=IGNORE, reduction="sum")
        log_p.backward()
        for n, p in params.items():
            if p.grad is not None:
                F_sum[n] += p.grad.float().square()
        advance(1)
    model.zero_grad(set_to_none=True)
    return {n: (s / len(encoded)).cpu() for n, s in F_sum.items()}
