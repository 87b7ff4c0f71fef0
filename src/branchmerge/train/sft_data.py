"""build-sft: verified traces to chat SFT examples in the Qwen3 thinking layout, with token counts, stats
like the seeds report (counts per domain and teacher, token totals, a length histogram) and a `datasets`
folder."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, SFTExample, Trace, atomic_dir

Layout = Literal["think", "field", "auto"]


def assistant_content(reasoning: str, answer: str) -> str:
    """The Qwen3 thinking layout of an assistant turn."""
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


@dataclass
class SFTBuildReport:
    examples: int = 0
    too_long: int = 0
    unverified: int = 0
    tokens: int = 0


def resolve_layout(layout: Layout, tokenizer: PreTrainedTokenizerBase) -> Literal["think", "field"]:
    """ "think": reasoning inside `<think>` in the assistant content; "field": in the message's
    `reasoning_content`, for chat templates that render it themselves (Qwen3's do); "auto": "field" when the
    student's template mentions `reasoning_content`, else "think"."""
    renders_field = "reasoning_content" in str(getattr(tokenizer, "chat_template", "") or "")
    if layout == "field" and not renders_field:
        raise BranchmergeError(
            "layout 'field': the student's chat template never reads reasoning_content, so the reasoning "
            "would be dropped from training; use layout 'think' (or 'auto')"
        )
    if layout != "auto":
        return layout
    return "field" if renders_field else "think"


def assistant_message(reasoning: str, answer: str, layout: Literal["think", "field"]) -> dict[str, str]:
    if layout == "field":
        return {"role": "assistant", "content": answer, "reasoning_content": reasoning}
    return {"role": "assistant", "content": assistant_content(reasoning, answer)}


def build_sft_examples(
    traces: list[Trace],
    problems: dict[str, Problem],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 4096,
    require_verified: bool = True,
    layout: Layout = "think",
) -> tuple[list[SFTExample], SFTBuildReport]:
    """One example per trace; token counts come from the student's own chat template.

    Examples longer than `max_length` tokens are dropped and counted rather than truncated: a cut trace
    teaches the student to stop thinking mid-way.
    """
    chosen = resolve_layout(layout, tokenizer)
    report = SFTBuildReport()
    out: list[SFTExample] = []
    for t in traces:
        if require_verified and not t.verified:
            report.unverified += 1
            continue
        problem = problems[t.problem_id]
        messages = [
            {"role": "user", "content": problem.question},
            assistant_message(t.reasoning, t.answer, chosen),
        ]
        text = str(tokenizer.apply_chat_template(messages, tokenize=False))
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n > max_length:
            report.too_long += 1
            continue
        out.append(
            SFTExample(
                messages=messages,
                domain=problem.domain,
                difficulty=t.difficulty or problem.difficulty,
                num_tokens=n,
                problem_id=t.problem_id,
                teacher=t.teacher,
            )
        )
        report.examples += 1
        report.tokens += n
    return out, report


def sft_stats(examples: list[SFTExample], report: SFTBuildReport | None = None) -> dict[str, Any]:
    """The numbers the seed papers report for their SFT sets: examples, total and max tokens, length
    percentiles, and counts per domain and per teacher."""
    lengths = sorted(e.num_tokens for e in examples)

    def pct(q: float) -> int:
        return lengths[min(len(lengths) - 1, int(q * len(lengths)))] if lengths else 0

    stats: dict[str, Any] = {
        "examples": len(examples),
        "total_tokens": sum(lengths),
        "max_tokens": lengths[-1] if lengths else 0,
        "mean_tokens": round(sum(lengths) / len(lengths), 1) if lengths else 0,
        "p50_tokens": pct(0.5),
        "p90_tokens": pct(0.9),
        "per_domain": dict(sorted(Counter(e.domain for e in examples).items())),
        "per_teacher": dict(sorted(Counter(e.teacher for e in examples).items())),
    }
    if report is not None:
        stats["dropped_too_long"] = report.too_long
        stats["dropped_unverified"] = report.unverified
    return stats


def length_histogram(examples: list[SFTExample], path: str | Path) -> None:
    """A PNG of example lengths in tokens, one series per domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    domains = sorted({e.domain for e in examples})
    ax.hist(
        [[e.num_tokens for e in examples if e.domain == d] for d in domains],
        bins=30,
        stacked=True,
        label=domains,
    )
    ax.set_xlabel("tokens per example (student tokenizer, chat template included)")
    ax.set_ylabel("examples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_as_dataset(examples: list[SFTExample], folder: str | Path) -> None:
    """The examples as a `datasets` folder (`load_from_disk`), written to a temporary sibling and renamed."""
    import datasets

    rows = [e.model_dump() for e in examples]
    keys = sorted({k for row in rows for m in row["messages"] for k in m})
    for row in rows:  # one schema for every message (`reasoning_content` is only on assistant turns)
        row["messages"] = [{k: m.get(k, "") for k in keys} for m in row["messages"]]
    with atomic_dir(Path(folder)) as tmp:
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp))
