"""Pydantic records that stages exchange through files."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(_Record):
    """A question with a reference answer and the grader that checks answers to it."""

    id: str
    domain: str
    question: str
    reference: str
    grader: dict[str, Any] = Field(default_factory=lambda: {"type": "exact"})
    level: int | None = None
    difficulty: str | None = None
    source: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class Trace(_Record):
    """One teacher response to one problem. Key = (problem_id, teacher, sample)."""

    problem_id: str
    teacher: str
    model: str
    sample: int
    temperature: float
    reasoning: str = ""
    answer: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    latency_s: float = 0.0
    error: str | None = None
    # Added by processors.
    verified: bool | None = None
    difficulty: str | None = None
    rv: int | None = None
    cd: int | None = None
    rewritten_from: str | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.problem_id, self.teacher, self.sample)


class Verdict(_Record):
    """A judge's parsed answer about one problem or trace (`target`); `value` is None exactly when `error` says
    why (no tag, out of range, request failed...)."""

    step: str
    template: str  # name.vN of the prompt
    judge: str
    target: str  # a problem id, or a trace key "problem_id|teacher|sample"
    value: int | str | None = None
    error: str | None = None
    raw: str = ""  # the end of the judge's answer, for reading failures


class SFTExample(_Record):
    """A chat example whose assistant turn holds `<think>\\n{reasoning}\\n</think>\\n\\n{answer}`."""

    messages: list[dict[str, str]]
    domain: str
    difficulty: str | None = None
    num_tokens: int
    problem_id: str
    teacher: str


class OffDomainLoss(_Record):
    """`offdomain_loss.json` in an expert's folder: its held-out loss per domain beside its base's.

    Losses are the mean next-token loss over the assistant tokens of held-out SFT examples (the loss SFT
    minimises). The other domains' entries measure forgetting, which `merge.mergeability` reads."""

    domain: str  # the expert's own domain
    expert: dict[str, float]  # domain -> loss of the expert
    base: dict[str, float]  # domain -> loss of the base it was fine-tuned from
    examples: dict[str, int] = Field(default_factory=dict)  # domain -> held-out examples measured


class EvalSample(_Record):
    """One graded model output on one benchmark item."""

    model: str
    benchmark: str
    item_id: str
    domain: str
    level: int | None = None
    sample: int
    output: str
    reasoning_tokens: int = 0
    output_tokens: int
    finish_reason: str | None = None
    passed: bool = Field(alias="pass")
    detail: str = ""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
