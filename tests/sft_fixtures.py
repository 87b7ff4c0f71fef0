"""SFT examples from tinylab problems solved step by step (one verified trace each), for training tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from branchmerge.records import SFTExample, Trace
from branchmerge.tinylab.build import assistant_content
from branchmerge.tinylab.domains import generate_problems
from branchmerge.train import build_sft_examples


def solved_examples(
    tokenizer: Any, domain: str, n: int, seed: int = 0, max_length: int = 4096, **trace_fields: Any
) -> list[SFTExample]:
    """`n` examples of `domain`, each the generator's own solution as the reasoning; `trace_fields` (e.g.
    difficulty="hard", teacher="b") go on every trace."""
    problems = generate_problems(domain, n, seed=seed)
    fields = {"teacher": "t", "model": "m", "sample": 0, "temperature": 0.6, "verified": True} | trace_fields
    traces = [
        Trace(problem_id=p.id, reasoning=p.meta["solution"], answer=p.reference, **fields) for p in problems
    ]
    examples, report = build_sft_examples(traces, {p.id: p for p in problems}, tokenizer, max_length)
    assert report.examples == n, f"{n - report.examples} of {n} {domain} examples were too long"
    return examples


def untokenized_examples(domains: Iterable[str], n: int, seed: int) -> list[SFTExample]:
    """`n` chat examples per domain (the generator's solution as the reasoning), not token-counted: for code that
    reads only the messages and the domain (calibration, held-out losses)."""
    return [
        SFTExample(
            messages=[
                {"role": "user", "content": p.question},
                {"role": "assistant", "content": assistant_content(p)},
            ],
            domain=d,
            num_tokens=0,
            problem_id=p.id,
            teacher="t",
        )
        for d in domains
        for p in generate_problems(d, n, seed=seed)
    ]
