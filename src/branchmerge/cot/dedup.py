"""dedup: drop traces of problems whose question duplicates an earlier one, exactly or nearly.

Exact duplicates are questions equal after trimming, collapsing whitespace and case-folding. Near duplicates
are found with MinHash LSH (`datasketch`): each question becomes the set of its word 3-grams (single words
for questions under 3 words), and two questions whose estimated Jaccard similarity is at least `threshold`
are the same problem asked twice (a renamed variable, a changed number in a long word problem). Problems
are visited in the order of their first trace; the first of a group is kept with all its traces, the others
lose theirs. The MinHash is seeded, so a rerun removes the same traces.
"""

from __future__ import annotations

from collections import Counter

from datasketch import MinHash, MinHashLSH
from pydantic import Field

from branchmerge.cot.base import Processor, StepContext, StepOptions, StepResult
from branchmerge.cot.text import normalize, words
from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, Trace

NUM_PERM = 128
MAX_THRESHOLD = 0.98  # above this, datasketch cannot split 128 permutations into >= 2 bands


class DedupOptions(StepOptions):
    threshold: float = Field(0.8, gt=0, le=MAX_THRESHOLD)


def shingles(text: str, n: int = 3) -> set[str]:
    ws = words(text)
    if len(ws) < n:
        return set(ws)
    return {" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)}


def _minhash(text: str) -> MinHash:
    m = MinHash(num_perm=NUM_PERM, seed=1)
    for s in shingles(text):
        m.update(s.encode("utf-8"))
    return m


def duplicate_problems(questions: dict[str, str], threshold: float = 0.8) -> dict[str, tuple[str, str]]:
    """problem id -> (id of the earlier problem it repeats, "exact" | "near"), over `questions` in order."""
    if not 0 < threshold <= MAX_THRESHOLD:
        raise BranchmergeError(
            f"dedup threshold {threshold}: must be in (0, {MAX_THRESHOLD}] (MinHash LSH with {NUM_PERM} "
            "permutations cannot band a stricter one; exact duplicates are always removed)"
        )
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    position = {pid: i for i, pid in enumerate(questions)}
    seen_exact: dict[str, str] = {}
    out: dict[str, tuple[str, str]] = {}
    for pid, question in questions.items():
        key = normalize(question)
        if key in seen_exact:
            out[pid] = (seen_exact[key], "exact")
            continue
        m = _minhash(question)
        matches = lsh.query(m)
        if matches:
            out[pid] = (min(matches, key=position.__getitem__), "near")
            continue
        seen_exact[key] = pid
        lsh.insert(pid, m)
    return out


def dedup_traces(
    traces: list[Trace], problems: dict[str, Problem], threshold: float = 0.8
) -> tuple[list[Trace], Counter[str], dict[str, tuple[str, str]]]:
    """(kept traces, removed per reason, duplicate problem id -> (kept id, kind))."""
    order = dict.fromkeys(t.problem_id for t in traces)
    dups = duplicate_problems({pid: problems[pid].question for pid in order}, threshold)
    kept = [t for t in traces if t.problem_id not in dups]
    removed = Counter(f"{dups[t.problem_id][1]} duplicate" for t in traces if t.problem_id in dups)
    return kept, removed, dups


def run(
    traces: list[Trace], problems: dict[str, Problem], options: DedupOptions, ctx: StepContext
) -> StepResult:
    kept, removed, _ = dedup_traces(traces, problems, options.threshold)
    return StepResult(kept=kept, removed=removed)


PROCESSOR = Processor("dedup", DedupOptions, run)
