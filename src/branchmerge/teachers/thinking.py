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


def final_answer(output: str) -> tuple[str, str | None]:
    """(the answer without its reasoning, None), or ("", why there is none): what graders grade.

    The answer is the text after the last `</think>`, up to a `<think>` opened after it and never closed; an
    output cut off inside `<think>` has none, whatever its reasoning holds.
    """
    _, answer, closed = split_reasoning(output)
    if not closed:
        return "", "no answer: the output was cut off inside <think>"
    answer = answer.split(THINK_OPEN, 1)[0].strip()
    return (answer, None) if answer else ("", "empty answer")
