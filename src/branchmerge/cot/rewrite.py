"""rewrite: have an LLM rewrite the traces of chosen difficulty levels, then verify the rewrites
(DistilQwen: easy traces are condensed, hard traces are spelled out; incorrect rewrites are dropped).

Prompts: `prompts/rewrite_LEVEL.vN.txt`; the rewriter answers `<think>reasoning</think>` then the final answer.
A rewrite is graded against the problem's reference like any trace. A verified rewrite becomes a new Trace with
teacher `ORIGINAL+rw` (so its key never collides with the original's), `rewritten_from` = the original's key,
the original's difficulty, and no RV/CD (those scored the old text); it replaces the original unless
`keep_original`. A rewrite that fails, does not parse, or was cut off is dropped and the original kept;
each outcome is counted and written to `STEM.verdicts.jsonl`.
"""

from __future__ import annotations

from typing import Literal

from branchmerge.cot.base import Processor, StepContext, StepOptions, StepResult, always
from branchmerge.errors import BranchmergeError
from branchmerge.graders import grade, needs_reference
from branchmerge.judge.calls import Template, ask, load_template, trace_key
from branchmerge.records import Problem, Trace, Verdict, write_jsonl
from branchmerge.teachers.thinking import THINK_CLOSE, split_reasoning


class RewriteOptions(StepOptions):
    levels: list[Literal["easy", "medium", "hard"]] = ["easy", "hard"]  # DistilQwen rewrites easy and hard
    keep_original: bool = False  # False: a verified rewrite replaces its original


def rewritten(answer: Trace, original: Trace) -> tuple[Trace | None, str | None]:
    """The rewriter's answer as a Trace, or (None, why not)."""
    if answer.error:
        return None, f"request failed: {answer.error[:200]}"
    if (
        THINK_CLOSE in answer.answer
    ):  # a reasoning judge: its own thinking is apart, the rewrite in the content
        reasoning, final, _ = split_reasoning(answer.answer)
    else:  # the client already split the <think> block of a plain model's content
        reasoning, final = answer.reasoning, answer.answer
    if answer.finish_reason == "length":
        return None, "the rewrite was cut off"
    if not reasoning.strip() or not final.strip():
        return None, "no <think>reasoning</think> followed by an answer"
    return (
        Trace(
            problem_id=original.problem_id,
            teacher=f"{original.teacher}+rw",
            model=answer.model,
            sample=original.sample,
            temperature=answer.temperature,
            reasoning=reasoning,
            answer=final,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            finish_reason=answer.finish_reason,
            latency_s=answer.latency_s,
            difficulty=original.difficulty,
            rewritten_from=trace_key(original),
        ),
        None,
    )


def check_rewrite(new: Trace, p: Problem) -> str | None:
    """Why the rewrite cannot be kept, or None when it passes the problem's grader."""
    if not p.reference.strip() and needs_reference(p.grader):
        return "no reference to verify the rewrite against"
    try:
        g = grade(new.answer, p.reference, p.grader)
    except ValueError as e:
        return f"grader error: {e}"
    return None if g.passed else f"rewrite failed verification ({g.detail or 'wrong answer'})"


def run(
    traces: list[Trace], problems: dict[str, Problem], options: RewriteOptions, ctx: StepContext
) -> StepResult:
    if ctx.judge is None:
        raise BranchmergeError("rewrite needs a rewriter endpoint (the judge)")
    levels = options.levels
    templates = {lvl: load_template(f"rewrite_{lvl}") for lvl in levels}
    chosen: dict[str, tuple[Template, Trace]] = {
        f"{templates[t.difficulty].tag}:{trace_key(t)}": (templates[t.difficulty], t)
        for t in traces
        if t.difficulty in templates and t.reasoning.strip()
    }
    prompts = {
        rid: tpl.render(question=problems[t.problem_id].question, reasoning=t.reasoning, answer=t.answer)
        for rid, (tpl, t) in chosen.items()
    }
    answers = ask(prompts, ctx.judge, ctx.cache, ctx.judging, ctx.show_progress)
    replaced: dict[str, Trace] = {}  # original key -> verified rewrite
    verdicts: list[Verdict] = []
    result = StepResult(kept=[])
    for rid, (tpl, t) in chosen.items():
        answer = answers.get(rid)
        new, why = rewritten(answer, t) if answer is not None else (None, "no answer from the rewriter")
        if new is not None:
            why = check_rewrite(new, problems[t.problem_id])
        judge = answer.teacher if answer is not None else ""
        verdicts.append(
            Verdict(
                step="rewrite",
                template=tpl.tag,
                judge=judge,
                target=trace_key(t),
                value=None if why else "ok",
                error=why,
            )
        )
        if why is None and new is not None:
            replaced[trace_key(t)] = new.model_copy(update={"verified": True})
            result.flagged[f"{t.difficulty} rewritten"] += 1
        else:
            result.flagged[f"{t.difficulty} rewrite dropped, original kept"] += 1
    for t in traces:
        new = replaced.get(trace_key(t))
        if new is None or options.keep_original:
            result.kept.append(t)
        if new is not None:
            result.kept.append(new)
    write_jsonl(ctx.side("verdicts.jsonl"), verdicts)
    skipped = sum(t.difficulty in templates and not t.reasoning.strip() for t in traces)
    if skipped:
        result.flagged["not rewritten: empty reasoning"] = skipped
    result.note = f"levels rewritten: {', '.join(levels)}"
    return result


PROCESSOR = Processor("rewrite", RewriteOptions, run, needs_reference=True, needs_judge=always)
