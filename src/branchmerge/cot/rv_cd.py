"""rv_cd: Reasoning Verbosity and Cognitive Difficulty of each trace, integers 0-9 from a judge LLM
(OmniThought; README, "Shipped recipes": adaptive-thinking).

Two requests per trace, one per rubric (`prompts/rv.vN.txt`, `prompts/cd.vN.txt`); the judge answers
`<score>N</score>`. RV sees the question, the reasoning and the answer; CD sees the question and the reasoning.
A score that does not parse leaves the field None and is counted; the `sample` step later drops unscored
traces under their own reason when it filters on that score. Every verdict goes to `STEM.verdicts.jsonl`.
"""

from __future__ import annotations

from branchmerge.cot.base import Processor, StepContext, StepResult, always
from branchmerge.errors import BranchmergeError
from branchmerge.judge.calls import Template, ask, load_template, parse_score, trace_key, verdict
from branchmerge.records import Problem, Trace, Verdict, write_jsonl


def score_traces(traces: list[Trace], problems: dict[str, Problem], ctx: StepContext) -> list[Verdict]:
    """One RV and one CD verdict per trace (targets are trace keys)."""
    if ctx.judge is None:
        raise BranchmergeError("rv_cd needs a judge endpoint")
    templates = (load_template("rv"), load_template("cd"))
    requests: dict[str, tuple[Template, Trace]] = {
        f"{tpl.tag}:{trace_key(t)}": (tpl, t) for t in traces for tpl in templates if t.reasoning.strip()
    }
    prompts = {
        rid: tpl.render(question=problems[t.problem_id].question, reasoning=t.reasoning, answer=t.answer)
        for rid, (tpl, t) in requests.items()
    }
    answers = ask(prompts, ctx.judge, ctx.cache, ctx.judging, ctx.show_progress)
    empty = [
        Verdict(
            step=tpl.name, template=tpl.tag, judge="", target=trace_key(t), error="empty reasoning: not asked"
        )
        for t in traces
        if not t.reasoning.strip()
        for tpl in templates
    ]
    return empty + [
        verdict(tpl.name, tpl, trace_key(t), answers.get(rid), parse_score)
        for rid, (tpl, t) in requests.items()
    ]


def run(traces: list[Trace], problems: dict[str, Problem], options: None, ctx: StepContext) -> StepResult:
    verdicts = score_traces(traces, problems, ctx)
    write_jsonl(ctx.side("verdicts.jsonl"), verdicts)
    scores = {(v.step, v.target): v.value for v in verdicts}
    result = StepResult(kept=[])
    for t in traces:
        rv, cd = scores[("rv", trace_key(t))], scores[("cd", trace_key(t))]
        for name, value in (("rv", rv), ("cd", cd)):
            if value is None:
                result.flagged[f"no {name} score (why: {ctx.side('verdicts.jsonl').name})"] += 1
        result.kept.append(t.model_copy(update={"rv": rv, "cd": cd}))
    return result


PROCESSOR = Processor("rv_cd", None, run, needs_judge=always)  # no settings: the rubrics are the prompts
