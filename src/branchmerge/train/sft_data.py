"""build-sft: verified traces to chat SFT examples in the Qwen3 thinking layout, with token counts."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from branchmerge.records import Problem, SFTExample, Trace


def assistant_content(reasoning: str, answer: str) -> str:
    """The Qwen3 thinking layout of an assistant turn."""
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


@dataclass
class SFTBuildReport:
    examples: int = 0
    too_long: int = 0
    unverified: int = 0
    tokens: int = 0


def build_sft_examples(
    traces: list[Trace],
    problems: dict[str, Problem],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 4096,
    require_verified: bool = True,
) -> tuple[list[SFTExample], SFTBuildReport]:
    """One example per trace; token counts come from the student's own chat template.

    Examples longer than `max_length` tokens are dropped and counted rather than truncated: a cut trace
    teaches the student to stop thinking mid-way.
    """
    report = SFTBuildReport()
    out: list[SFTExample] = []
    for t in traces:
        if require_verified and not t.verified:
            report.unverified += 1
            continue
        problem = problems[t.problem_id]
        messages = [
            {"role": "user", "content": problem.question},
            {"role": "assistant", "content": assistant_content(t.reasoning, t.answer)},
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
