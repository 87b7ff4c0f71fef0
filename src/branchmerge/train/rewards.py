"""Reward functions for TRL's GRPOTrainer (`reward_funcs=`), DistilQwen's
R = R_fmt + R_acc + λ_RV·R_RV + λ_CD·R_CD with R_x = −|f_x − clip(f_x, L_x, H_x)|.

Each function takes `completions` (strings, or conversational lists of messages) and the dataset's columns as
keyword lists, as GRPOTrainer passes them, and returns one float per completion, or None where the reward does
not apply (a row without a reference): TRL skips those instead of averaging in a made-up score. The weights λ
go to `GRPOConfig(reward_weights=...)`; `grpo_rewards` returns both lists in matching order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from branchmerge.graders import grade_many, needs_reference
from branchmerge.teachers.thinking import split_reasoning

RewardFunc = Callable[..., list[float | None]]
# A scorer (an RV or CD reward model, say) maps (prompts, completion texts) to one score per completion.
Scorer = Callable[[Sequence[Any], Sequence[str]], Sequence[float]]


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    """The generated text: a string as is, or the content of a conversational completion's last message."""
    if isinstance(completion, str):
        return completion
    return str(completion[-1].get("content") or "") if completion else ""


def format_reward(completions: Sequence[Any], **_: Any) -> list[float | None]:
    """1 when the completion thinks inside a closed `<think>` and then answers (non-empty text after
    `</think>`), else 0."""
    out: list[float | None] = []
    for c in completions:
        text = completion_text(c)
        reasoning, answer, closed = split_reasoning(text)
        out.append(1.0 if closed and "</think>" in text and reasoning.strip() and answer.strip() else 0.0)
    return out


def accuracy_reward(
    completions: Sequence[Any],
    reference: Sequence[str | None] | None = None,
    grader: Sequence[dict[str, Any] | None] | None = None,
    **_: Any,
) -> list[float | None]:
    """1 when the answer after `</think>` passes the row's grader (the `grader` column, exact match when
    absent) against its `reference` column, else 0; None for rows whose grader needs a reference and has
    none (a code grader's tests are its reference). Graded over all cores (`grade_many`); a reference the
    grader cannot read gives None as well, never a made-up 0."""
    refs = list(reference) if reference is not None else [None] * len(completions)
    specs = [
        s or {"type": "exact"} for s in (list(grader) if grader is not None else [None] * len(completions))
    ]
    todo = [i for i, (r, s) in enumerate(zip(refs, specs, strict=True)) if r or not needs_reference(s)]
    items = [
        (split_reasoning(completion_text(completions[i]))[1], str(refs[i] or ""), specs[i]) for i in todo
    ]
    out: list[float | None] = [None] * len(completions)
    for i, g in zip(todo, grade_many(items, errors="record"), strict=True):
        out[i] = None if g.error else 1.0 if g.passed else 0.0
    return out


def range_reward(scorer: Scorer, low: float, high: float, name: str) -> RewardFunc:
    """R = −|f − clip(f, low, high)|: 0 inside [low, high], minus the distance outside (DistilQwen's range reward)."""
    if low > high:
        raise ValueError(f"{name}: low {low} > high {high}")

    def reward(
        completions: Sequence[Any], prompts: Sequence[Any] | None = None, **_: Any
    ) -> list[float | None]:
        texts = [completion_text(c) for c in completions]
        scores = list(scorer(list(prompts) if prompts is not None else [None] * len(texts), texts))
        if len(scores) != len(texts):
            raise ValueError(f"{name}: the scorer gave {len(scores)} scores for {len(texts)} completions")
        return [-abs(f - min(max(f, low), high)) for f in scores]

    reward.__name__ = name  # GRPOTrainer logs each reward under its function's name
    return reward


def grpo_rewards(
    *,
    rv: tuple[Scorer, float, float] | None = None,
    cd: tuple[Scorer, float, float] | None = None,
    lambda_rv: float = 1.0,
    lambda_cd: float = 1.0,
) -> tuple[list[RewardFunc], list[float]]:
    """(reward_funcs, reward_weights) for GRPOTrainer / GRPOConfig: format and accuracy with weight 1, and the
    RV and CD range rewards (scorer, L, H) with weights λ when given."""
    funcs: list[RewardFunc] = [format_reward, accuracy_reward]
    weights = [1.0, 1.0]
    if rv is not None:
        funcs.append(range_reward(*rv, name="rv_reward"))
        weights.append(lambda_rv)
    if cd is not None:
        funcs.append(range_reward(*cd, name="cd_reward"))
        weights.append(lambda_cd)
    return funcs, weights
