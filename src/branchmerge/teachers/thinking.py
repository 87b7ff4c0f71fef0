"""Split a completion into reasoning and answer the way Qwen3 thinking models lay it out."""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_reasoning(text: str) -> tuple[str, str, bool]:
    """Return (reasoning, answer, closed).

    The answer is what follows the last `</think>`. A completion that opened `<think>` but never closed it was cut
    mid-thought: it has no answer (`closed` is False). A completion with neither tag is all answer.
    Templates that put `<think>` in the prompt give completions with only `</think>`; that case is handled too.
    """
    if THINK_CLOSE in text:
        head, _, answer = text.rpartition(THINK_CLOSE)
        reasoning = head.split(THINK_OPEN, 1)[1] if THINK_OPEN in head else head
        return reasoning.strip(), answer.strip(), True
    if THINK_OPEN in text:
        return text.split(THINK_OPEN, 1)[1].strip(), "", False
    return "", text.strip(), True
