"""Records are the contracts between stages: Problem, Trace, SFTExample, EvalSample and Verdict, strict models
read and written as JSONL (a bad line is an error naming the file and line)."""

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
