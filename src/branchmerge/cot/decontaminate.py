"""decontaminate: drop traces whose question or reasoning shares a long n-gram with a benchmark item.

The test is the one the Llama and GPT reports use: any shared word n-gram (default 13 words, after lowercasing
and keeping only word characters) between a training text and a benchmark question counts as contamination.
Both the question and the teacher's reasoning and answer are checked, since a teacher can quote a benchmark
item it memorised. Texts shorter than n words are compared as whole texts. Every removal is reported with
the benchmark item and the n-gram that matched, so a false positive can be seen and the n changed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field

from branchmerge.cot.base import Processor, StepContext, StepOptions, StepResult
from branchmerge.cot.text import words
from branchmerge.records import Problem, Trace, read_jsonl, write_jsonl


class DecontaminateOptions(StepOptions):
    benchmarks: list[Path] = []  # Problems JSONL files
    ngram: int = Field(13, gt=0)


class Contamination(BaseModel):
    problem_id: str
    benchmark_item: str  # the benchmark problem's id
    field: str  # question | reasoning | answer
    ngram: str


def ngrams(text: str, n: int) -> set[str]:
    ws = words(text)
    if len(ws) < n:
        return {" ".join(ws)} if ws else set()
    return {" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)}


def benchmark_index(benchmarks: list[Problem], n: int = 13) -> dict[str, str]:
    """n-gram -> the id of a benchmark item that contains it."""
    index: dict[str, str] = {}
    for item in benchmarks:
        for g in ngrams(item.question, n):
            index.setdefault(g, item.id)
    return index


def decontaminate_traces(
    traces: list[Trace], problems: dict[str, Problem], benchmarks: list[Problem], n: int = 13
) -> tuple[list[Trace], Counter[str], list[Contamination]]:
    """(kept traces, removed per reason, one record per removed trace saying why)."""
    index = benchmark_index(benchmarks, n)
    kept: list[Trace] = []
    removed: Counter[str] = Counter()
    found: list[Contamination] = []
    for t in traces:
        hit = None
        for field, text in (
            ("question", problems[t.problem_id].question),
            ("reasoning", t.reasoning),
            ("answer", t.answer),
        ):
            match = next((g for g in ngrams(text, n) if g in index), None)
            if match is not None:
                hit = Contamination(
                    problem_id=t.problem_id, benchmark_item=index[match], field=field, ngram=match
                )
                break
        if hit is None:
            kept.append(t)
        else:
            removed[f"{n}-gram in {hit.field}"] += 1
            found.append(hit)
    return kept, removed, found


def run(
    traces: list[Trace], problems: dict[str, Problem], options: DecontaminateOptions, ctx: StepContext
) -> StepResult:
    """Writes every removal to STEM.contamination.jsonl. Without benchmark files there is nothing to check
    against: the step keeps everything and says so in its note."""
    o = options
    if not o.benchmarks:
        return StepResult(kept=traces, note="skipped: no benchmark files given")
    items = [p for f in o.benchmarks for p in read_jsonl(f, Problem)]
    kept, removed, found = decontaminate_traces(traces, problems, items, o.ngram)
    write_jsonl(ctx.side("contamination.jsonl"), found)
    return StepResult(kept=kept, removed=removed, note=f"{len(items)} benchmark items, {o.ngram}-grams")


PROCESSOR = Processor("decontaminate", DecontaminateOptions, run)
