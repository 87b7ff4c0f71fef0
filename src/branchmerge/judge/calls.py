"""Judge calls for the LLM-scored processors (difficulty, rv_cd, rewrite) and the rubric judge (`rubric.py`):
versioned prompts, cached answers, parsing that never guesses.

Every request goes through the teachers client. A judge request is a Problem whose id names the prompt template
with its version and the thing judged (`rv.v1:p7|teacher-a|0`) and whose question is the rendered prompt; the
judge's answers are Traces appended to a cache file. Judging therefore resumes after a crash, is rate-limited
and pooled like generation, and a rerun asks nothing again. Editing a template means adding `NAME.v2.txt`: the
request ids change with the version, so verdicts from an older prompt are never reused.

An answer that does not parse (no tag, two different values, out of range), a failed request and a truncated
answer all become a Verdict with `value=None` and the reason in `error`; the processor keeps the trace without
the score and counts it. No default score is ever filled in.
"""

from __future__ import annotations

import asyncio
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, Trace, Verdict, read_jsonl
from branchmerge.teachers.config import TeacherConfig

PROMPTS = Path(__file__).with_name("prompts")


@dataclass(frozen=True)
class Template:
    name: str
    version: int
    text: str

    @property
    def tag(self) -> str:
        return f"{self.name}.v{self.version}"

    def render(self, **fields: str) -> str:
        """Fill `$field` placeholders (string.Template: LaTeX braces in questions need no escaping)."""
        return string.Template(self.text).substitute(fields)


def load_template(name: str, version: int | None = None) -> Template:
    """The template `prompts/NAME.vN.txt`: version N, or the newest when `version` is None."""
    found = {
        int(m.group(1)): p
        for p in PROMPTS.glob(f"{name}.v*.txt")
        if (m := re.search(r"\.v(\d+)\.txt$", p.name))
    }
    if not found:
        raise BranchmergeError(f"no prompt template named '{name}' in {PROMPTS}")
    v = max(found) if version is None else version
    if v not in found:
        raise BranchmergeError(f"prompt template '{name}' has no version {v} (have {sorted(found)})")
    return Template(name, v, found[v].read_text(encoding="utf-8"))


class JudgeSettings(BaseModel):
    """Sampling for judge calls. Temperature 0 by default so that verdicts repeat; any value is sent as given."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, gt=0)  # reasoning judges think before they answer
    seed: int = 0


async def aask(
    requests: Mapping[str, str],
    judge: TeacherConfig,
    cache: Path,
    settings: JudgeSettings,
    show_progress: bool = True,
) -> dict[str, Trace]:
    """Send each {request id: prompt} to the judge once; return {request id: the judge's answer as a Trace}.

    Answers already in `cache` are reused; error answers from an earlier run are asked again.
    """
    from branchmerge.teachers.client import agenerate

    have = _cached(judge, cache, set(requests))
    todo = {rid: p for rid, p in requests.items() if rid not in have or have[rid].error}
    if todo:
        await agenerate(
            [Problem(id=rid, domain="judge", question=p, reference="") for rid, p in todo.items()],
            judge,
            cache,
            n=1,
            temperatures=(settings.temperature,),
            top_p=settings.top_p,
            max_tokens=settings.max_tokens,
            seed=settings.seed,
            retry_errors=any(rid in have for rid in todo),
            show_progress=show_progress,
        )
        have = _cached(judge, cache, set(requests))
    return have


def ask(
    requests: Mapping[str, str],
    judge: TeacherConfig,
    cache: Path,
    settings: JudgeSettings,
    show_progress: bool = True,
) -> dict[str, Trace]:
    """`aask` from synchronous code (it starts its own event loop)."""
    return asyncio.run(aask(requests, judge, cache, settings, show_progress))


def _cached(judge: TeacherConfig, cache: Path, rids: set[str]) -> dict[str, Trace]:
    if not cache.exists():
        return {}
    return {
        t.problem_id: t for t in read_jsonl(cache, Trace) if t.teacher == judge.name and t.problem_id in rids
    }


def trace_key(t: Trace) -> str:
    return f"{t.problem_id}|{t.teacher}|{t.sample}"


# ------------------------------------------------------------------------------------------------ parsing


def _tagged(text: str, tag: str) -> tuple[str | None, str | None]:
    """(the one value inside <tag>…</tag>, None) or (None, why not)."""
    values = [v.strip() for v in re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.S | re.I)]
    if not values:
        return None, f"no <{tag}>…</{tag}> in the answer"
    if len({v.lower() for v in values}) > 1:
        return None, f"conflicting <{tag}> values {values[:4]}"
    return values[-1], None


def parse_score(text: str, low: int = 0, high: int = 9) -> tuple[int | None, str | None]:
    """An integer score from `<score>N</score>`, or from an answer that is only the number."""
    value, error = _tagged(text, "score")
    if value is None:
        bare = text.strip().rstrip(".")
        if not re.fullmatch(r"\d+", bare):
            return None, error
        value = bare
    if not re.fullmatch(r"\d+", value) or not low <= int(value) <= high:
        return None, f"score {value[:20]!r} is not an integer from {low} to {high}"
    return int(value), None


def parse_label(text: str, tag: str, labels: tuple[str, ...]) -> tuple[str | None, str | None]:
    """One of `labels` from `<tag>label</tag>`, or from an answer that is only the label (any case)."""
    value, error = _tagged(text, tag)
    if value is None:
        bare = text.strip().rstrip(".").lower()
        if bare not in labels:
            return None, error
        value = bare
    if value.lower() not in labels:
        return None, f"{tag} {value[:20]!r} is not one of {', '.join(labels)}"
    return value.lower(), None


def verdict(
    step: str,
    template: Template,
    target: str,
    answer: Trace | None,
    parse: Callable[[str], tuple[int | str | None, str | None]],
) -> Verdict:
    """Parse one judge answer into a Verdict; a missing, failed or truncated answer is an error, not a score."""
    base = {"step": step, "template": template.tag, "target": target}
    if answer is None:
        return Verdict(**base, judge="", error="no answer from the judge")
    base["judge"] = answer.teacher
    if answer.error:
        return Verdict(**base, error=f"request failed: {answer.error[:200]}")
    if answer.finish_reason == "length" and not answer.answer:
        return Verdict(**base, error="the judge's answer was cut off before it gave one")
    value, error = parse(answer.answer)
    return Verdict(**base, value=value, error=error, raw=answer.answer[-300:])
