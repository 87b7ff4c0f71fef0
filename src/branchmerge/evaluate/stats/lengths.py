"""Output and reasoning tokens per model and group, and the share of samples cut at the token limit."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from branchmerge.evaluate.stats.groups import split
from branchmerge.records import EvalSample


@dataclass(frozen=True)
class Lengths:
    """Mean tokens per sample, and the share of samples cut at the token limit (finish_reason "length")."""

    output: float
    reasoning: float
    truncated: float
    samples: int


def length_table(
    samples: Iterable[EvalSample],
    *,
    by: str | None = "domain",
    difficulty: Mapping[str, str | None] | None = None,
) -> dict[str, dict[str, Lengths]]:
    """model -> group (and "all") -> mean output tokens, mean reasoning tokens, truncation rate."""
    out: dict[str, dict[str, Lengths]] = {}
    for m, groups in split(samples, by, difficulty).items():
        out[m] = {
            g: Lengths(
                output=sum(s.output_tokens for s in ss) / len(ss),
                reasoning=sum(s.reasoning_tokens for s in ss) / len(ss),
                truncated=sum(s.finish_reason == "length" for s in ss) / len(ss),
                samples=len(ss),
            )
            for g, ss in groups.items()
        }
    return out
