"""Run one local checkpoint on benchmark problems, `n` samples each, and grade every sample as it completes."""

from __future__ import annotations

from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from branchmerge.graders import grade
from branchmerge.records import EvalSample, Problem, append_jsonl, read_jsonl
from branchmerge.teachers.local import LocalModel, SamplingParams


def evaluate_model(
    model_dir: str | Path,
    problems: list[Problem],
    out_path: str | Path,
    *,
    model_name: str | None = None,
    benchmark: str = "tinylab",
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_tokens: int = 256,
    seed: int = 0,
    batch_size: int = 64,
    show_progress: bool = True,
) -> list[EvalSample]:
    """Generate and grade; samples are appended to `out_path` per batch, and a rerun resumes where it stopped.

    The reasoning is removed before grading (only the text after `</think>` is the answer); a completion cut
    before `</think>` has no answer and fails.
    """
    lm = LocalModel(model_dir)
    name = model_name or lm.name
    out_path = Path(out_path)
    done = read_jsonl(out_path, EvalSample) if out_path.exists() else []
    have = {(s.item_id, s.sample) for s in done}
    todo = [(p, k) for p in problems for k in range(n) if (p.id, k) not in have]
    results = list(done)
    with Progress(
        TextColumn("[bold]eval {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not show_progress,
        transient=True,
    ) as bar:
        task = bar.add_task(name, total=len(todo))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            requests = [
                (
                    [{"role": "user", "content": p.question}],
                    SamplingParams(temperature, top_p, max_tokens, seed=_sample_seed(seed, p.id, k)),
                )
                for p, k in chunk
            ]
            batch = []
            for (p, k), c in zip(chunk, lm.complete(requests), strict=True):
                g = grade(c.content, p.reference, p.grader)
                batch.append(
                    EvalSample(
                        model=name,
                        benchmark=benchmark,
                        item_id=p.id,
                        domain=p.domain,
                        level=p.level,
                        sample=k,
                        output=c.content,
                        reasoning_tokens=len(lm.tokenizer(c.reasoning)["input_ids"]) if c.reasoning else 0,
                        output_tokens=c.completion_tokens,
                        finish_reason=c.finish_reason,
                        passed=g.passed,
                        detail=g.detail,
                    )
                )
            append_jsonl(out_path, batch)
            results.extend(batch)
            bar.advance(task, len(chunk))
    return results


def _sample_seed(seed: int, item_id: str, k: int) -> int:
    import hashlib

    h = hashlib.sha256(f"{seed}:{item_id}:{k}".encode()).digest()
    return int.from_bytes(h[:6], "big")
