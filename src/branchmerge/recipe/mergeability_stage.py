"""The `mergeability` stage of a recipe: before any merge, will the domain experts merge? Their task vectors
(`merge/analyze.py`) and how much each forgot the domains it was not trained on (`merge/forgetting.py`),
weighed by `merge.mergeability`."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from branchmerge.recipe.summaries import MergeabilitySummary
from branchmerge.records import SFTExample, read_jsonl


def mergeability_stage(
    sft_file: Path,
    student: Path,
    experts: dict[str, tuple[Path, str]],
    per_domain: int,
    work: Path,
    show_progress: bool,
) -> MergeabilitySummary:
    """Will the domain experts merge (`experts`: name -> (model folder, domain))? Each expert's loss on the first
    `per_domain` SFT examples of every domain beside the student's: an expert never trained on the other
    domains' examples, so a rise there is forgetting. The records go to <work>/<expert>/offdomain_loss.json,
    then `merge.mergeability` weighs them with the task vectors."""
    from branchmerge.merge.forgetting import domain_losses, measure_offdomain_loss
    from branchmerge.merge.mergeability import mergeability

    examples: dict[str, list[SFTExample]] = {}
    for e in read_jsonl(sft_file, SFTExample):
        rows = examples.setdefault(e.domain, [])
        if len(rows) < per_domain:
            rows.append(e)
    examples = dict(sorted(examples.items()))
    device = "cuda" if torch.cuda.is_available() else None
    base = domain_losses(student, examples, device=device)
    records = [
        measure_offdomain_loss(folder, domain, examples, base_losses=base, device=device, out_dir=work / name)
        for name, (folder, domain) in experts.items()
    ]
    m = mergeability(
        student,
        [folder for folder, _ in experts.values()],
        labels=list(experts),
        offdomain=records,
        show_progress=show_progress,
    )

    def r(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 4)

    return MergeabilitySummary(
        verdict=m.verdict,
        reason=m.reason,
        rel_delta={n: round(x, 4) for n, x in zip(m.experts, m.rel_delta, strict=True)},
        rel_delta_no_embed={n: round(x, 4) for n, x in zip(m.experts, m.rel_delta_no_embed, strict=True)},
        mean_cosine=r(m.mean_cosine),
        sign_conflict=r(m.sign_conflict),
        sign_conflict_chance=round(m.sign_conflict_chance, 4),
        forgetting={n: round(x, 4) for n, x in m.forgetting.items()},
        offdomain_loss={
            "student": {d: round(x, 4) for d, x in base.items()},
            **{
                n: {d: round(x, 4) for d, x in rec.expert.items()}
                for n, rec in zip(experts, records, strict=True)
            },
        },
        examples={d: len(rows) for d, rows in examples.items()},
        findings=m.findings,
    )
