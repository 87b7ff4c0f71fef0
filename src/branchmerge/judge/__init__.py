"""The LLM judge: versioned prompts, cached and resumable judge calls through the teachers client, parsing that
never guesses (`calls.py`), and rubric rulings for the `judge` grader (`rubric.py`). The CoT processors and the
graders both use it; it uses neither."""

from branchmerge.judge.calls import (
    JudgeSettings,
    Template,
    ask,
    load_template,
    parse_label,
    parse_score,
    verdict,
)
from branchmerge.judge.rubric import Ruling, configure_judge, judge_configured, judge_spec, judging, rule_many

__all__ = [
    "JudgeSettings",
    "Ruling",
    "Template",
    "ask",
    "configure_judge",
    "judge_configured",
    "rule_many",
    "judge_spec",
    "judging",
    "load_template",
    "parse_label",
    "parse_score",
    "verdict",
]
