"""Records are the contracts between stages (DESIGN.md, "Records")."""

from branchmerge.records.jsonl import append_jsonl, atomic_dir, atomic_write_text, read_jsonl, write_jsonl
from branchmerge.records.models import EvalSample, OffDomainLoss, Problem, SFTExample, Trace, Verdict

__all__ = [
    "EvalSample",
    "OffDomainLoss",
    "Problem",
    "SFTExample",
    "Trace",
    "Verdict",
    "append_jsonl",
    "atomic_dir",
    "atomic_write_text",
    "read_jsonl",
    "write_jsonl",
]
