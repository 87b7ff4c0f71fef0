"""Will these experts merge? A verdict (likely / risky / unlikely) with a one-line reason, before merging.

Signals, from the task vectors delta_t = theta_t - theta_base (`analyze.py`, streamed, one tensor at a time):
  - delta size ||delta_t|| / ||theta_base|| per expert, over the whole model and without the embeddings
    (embed_tokens, lm_head): in full fine-tuning most of the change sits in the (tied) embedding;
  - the mean pairwise cosine between the experts' task vectors;
  - the sign-conflict rate: among coordinates where two or more experts moved, the share whose moves disagree
    in sign (every nonzero coordinate counts, TIES density 1), beside what independent signs would give,
    1 - 2^(1 - k) for k experts (1/2 for two, 3/4 for three);
and, where training wrote `offdomain_loss.json` into an expert's folder (`forgetting.py`), its forgetting:
the mean relative rise of its held-out loss on the other domains over the base's.

Thresholds, and the evidence they come from: the tinylab demo's five training regimes (one seed, 60 held-out
items per domain; the repository's merge benchmarks). Merges kept the experts' gains only where experts stayed
close to a competent base and did not forget the other domains (v4: ||delta||/||theta|| 0.023-0.028, v5:
0.046-0.081, mean cosine 0.22-0.42, off-domain accuracy within about 5 points of the base). They failed with
large deltas (v3: 0.19-0.23, every merge 0-8%), with mid-sized LoRA deltas that forgot (v2: 0.089-0.098), and
with small deltas that forgot (v1: 0.036-0.041, experts 10-17 points below the base off-domain):
  - delta size (largest expert, whole model): > DELTA_UNLIKELY (0.15) unlikely (v3); > DELTA_RISKY (0.085)
    risky (above every variant that merged; v2 failed at 0.089);
  - mean cosine: < COS_RISKY (-0.1) risky, < COS_UNLIKELY (-0.3) unlikely: opposed task vectors cancel in an
    average (no variant had them: all were 0.15-0.70). Near 0 is fine: TinyR1's Branch-Merge expects experts
    to update nearly orthogonal directions;
  - sign conflicts above SIGN_RISKY (1.2) times chance: risky (not measured on the variants; a rate above
    chance means the experts push the same coordinates apart);
  - forgetting (largest expert): > FORGET_UNLIKELY (0.20) unlikely, > FORGET_RISKY (0.05) risky. Provisional:
    the variants' forgetting was measured in accuracy, not loss, so these loss bounds are yet to be calibrated.
Without forgetting logged for every expert the verdict is at best "risky" (small, aligned deltas did not
predict success in v1), unless the experts are nearly the same model (mean cosine >= SAME_COS, 0.95). The
base's own competence mattered too (27% base: no merge gained; 49%: +5 points) but is not visible in weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from branchmerge.errors import BranchmergeError
from branchmerge.merge.analyze import AnalysisResult, Sums, analyze_task_vectors
from branchmerge.merge.config import MergeConfig
from branchmerge.merge.forgetting import forgetting, read_offdomain_loss
from branchmerge.records import OffDomainLoss

Verdict = Literal["likely", "risky", "unlikely"]

DELTA_RISKY, DELTA_UNLIKELY = 0.085, 0.15
COS_RISKY, COS_UNLIKELY = -0.1, -0.3
SIGN_RISKY = 1.2
FORGET_RISKY, FORGET_UNLIKELY = 0.05, 0.20
SAME_COS = 0.95
EMBEDDINGS = ("embed_tokens", "lm_head")


@dataclass(frozen=True)
class Mergeability:
    verdict: Verdict
    reason: str  # one line
    experts: list[str]  # labels, in the order of the per-expert lists
    rel_delta: list[float]  # ||delta_t|| / ||theta_base||, whole model
    rel_delta_no_embed: list[float]  # the same without embed_tokens / lm_head
    mean_cosine: float  # nan with one expert
    sign_conflict: float  # share of the overlapping coordinates whose signs disagree; nan with one expert
    sign_conflict_chance: float  # 1 - 2^(1 - k)
    forgetting: dict[str, float] = field(default_factory=dict)  # expert -> mean relative off-domain loss rise
    findings: list[str] = field(default_factory=list)  # every signal past a threshold, worst first

    def numbers(self) -> str:
        """The signals on one line, for printing under the verdict."""
        parts = [f"‖δ‖/‖θ‖ {_span(self.rel_delta)} ({_span(self.rel_delta_no_embed)} without embeddings)"]
        if len(self.experts) >= 2:
            parts.append(f"mean cos {self.mean_cosine:.2f}")
            parts.append(f"sign conflicts {self.sign_conflict:.0%} (chance {self.sign_conflict_chance:.0%})")
        if self.forgetting:
            parts.append("off-domain loss " + ", ".join(f"{e} {v:+.1%}" for e, v in self.forgetting.items()))
        else:
            parts.append("off-domain loss not logged")
        return "; ".join(parts)


def _span(values: Sequence[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.3f}" if math.isclose(lo, hi, rel_tol=0.005) else f"{lo:.3f}–{hi:.3f}"


def judge(
    rel_delta: Sequence[float],
    mean_cosine: float,
    sign_conflict: float,
    n_experts: int,
    forgetting: Mapping[str, float],
) -> tuple[Verdict, str, list[str]]:
    """(verdict, reason, findings) from the signals; thresholds and their evidence in the module docstring.

    `forgetting` holds the experts that logged it; fewer than `n_experts` entries means some did not.
    """
    unlikely: list[str] = []
    risky: list[str] = []
    delta = max(rel_delta)
    if delta > DELTA_UNLIKELY:
        unlikely.append(f"the experts moved far from the base (‖δ‖/‖θ‖ up to {delta:.2f} > {DELTA_UNLIKELY})")
    elif delta > DELTA_RISKY:
        risky.append(f"large task vectors (‖δ‖/‖θ‖ up to {delta:.3f} > {DELTA_RISKY})")
    if not math.isnan(mean_cosine):
        if mean_cosine < COS_UNLIKELY:
            unlikely.append(f"the experts pull in opposite directions (mean cos {mean_cosine:.2f})")
        elif mean_cosine < COS_RISKY:
            risky.append(f"the task vectors are opposed (mean cos {mean_cosine:.2f}); averaging cancels them")
    chance = 1 - 2 ** (1 - n_experts)
    if n_experts >= 2 and not math.isnan(sign_conflict) and sign_conflict > SIGN_RISKY * chance:
        risky.append(f"sign conflicts {sign_conflict:.0%} exceed chance ({chance:.0%})")
    if forgetting:
        worst, rise = max(forgetting.items(), key=lambda kv: kv[1])
        if rise > FORGET_UNLIKELY:
            unlikely.append(f"{worst} forgot the other domains (their loss {rise:+.0%} over the base's)")
        elif rise > FORGET_RISKY:
            risky.append(f"{worst} lost ground on the other domains (loss {rise:+.0%} over the base's)")
    findings = unlikely + risky
    if unlikely:
        return "unlikely", unlikely[0], findings
    if risky:
        return "risky", risky[0], findings
    if n_experts >= 2 and mean_cosine >= SAME_COS:
        return "likely", f"the experts are nearly the same model (mean cos {mean_cosine:.2f})", findings
    if len(forgetting) < n_experts:
        return (
            "risky",
            f"small task vectors (‖δ‖/‖θ‖ ≤ {delta:.3f}), but off-domain losses were not logged for every "
            "expert, and small deltas alone did not predict success",
            findings,
        )
    worst_rise = max(forgetting.values())
    return (
        "likely",
        f"small task vectors (‖δ‖/‖θ‖ ≤ {delta:.3f}) and little forgetting (off-domain loss ≤ {worst_rise:+.1%})",
        findings,
    )


def _without_embeddings(result: AnalysisResult) -> Sums:
    pooled = result.group(lambda r: None if any(e in r.name for e in EMBEDDINGS) else "rest")
    return pooled.get("rest", Sums.zeros(len(result.experts)))


def mergeability(
    base: str | Path,
    experts: Sequence[str | Path],
    *,
    labels: Sequence[str] | None = None,
    offdomain: Sequence[OffDomainLoss | None] | None = None,
    show_progress: bool = False,
) -> Mergeability:
    """Analyse the experts' task vectors against `base` (reads every weight once) and their
    `offdomain_loss.json` where present; raises BranchmergeError on unusable folders.

    labels: the experts' names in the result (default: their folder names). offdomain: their off-domain loss
    records, one per expert in order (None where not measured), instead of the files in their folders."""
    result = analyze_task_vectors(base, experts, density=1.0, show_progress=show_progress)
    total, rest, k = result.total, _without_embeddings(result), len(result.experts)
    names = list(labels) if labels is not None else result.labels
    records = list(offdomain) if offdomain is not None else [read_offdomain_loss(p) for p in result.experts]
    if len(names) != k or len(records) != k:
        raise BranchmergeError(
            f"mergeability: {k} experts, but {len(names)} labels and {len(records)} records"
        )
    logged = {}
    for label, record in zip(names, records, strict=True):
        rise = forgetting(record) if record is not None else None
        if rise is not None:
            logged[label] = rise
    rel = [total.rel_norm(t) for t in range(k)]
    cos, conflict = total.mean_cosine(), total.sign_conflict()
    verdict, reason, findings = judge(rel, cos, conflict, k, logged)
    return Mergeability(
        verdict=verdict,
        reason=reason,
        experts=names,
        rel_delta=rel,
        rel_delta_no_embed=[rest.rel_norm(t) for t in range(k)],
        mean_cosine=cos,
        sign_conflict=conflict,
        sign_conflict_chance=1 - 2 ** (1 - k),
        forgetting=logged,
        findings=findings,
    )


def config_mergeability(config: MergeConfig, *, show_progress: bool = False) -> Mergeability | None:
    """The mergeability of a config's models against its base_model; None when it names no base_model, no
    other model, or a folder that does not exist yet (a later step of a sequence). Where the base_model is one
    of the experts (SLERP, Arcee Fusion) this measures the other expert's distance from it, not from the
    common base: call `mergeability(base, experts)` for that."""
    if config.base_model is None:
        return None
    base = Path(config.base_model).expanduser()
    experts = [Path(m.model).expanduser() for m in config.models]
    experts = [e for e in experts if e.resolve() != base.resolve()]
    if not experts or not all(p.is_dir() for p in (base, *experts)):
        return None
    return mergeability(base, experts, show_progress=show_progress)
