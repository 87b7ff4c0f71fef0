"""Rubric judging: rule on an open-ended answer against a written rubric with a judge model behind an
OpenAI-compatible endpoint (the `judge` grader, used only by the mdr scenario and ethics domains; everything else
is graded programmatically). The `judge` grader (`graders/judge.py`) turns each ruling into a Grade.

Spec: {"type": "judge", "question": ..., "rubric": ..., "item": "mdr-ethics-L3"} plus, optionally,
- "threshold": N (0-10): score mode; the judge answers `<score>N</score>` and the answer passes at score >= N.
  Without it the judge answers `<verdict>PASS</verdict>` or `<verdict>FAIL</verdict>`.
- "prompt_version": the template version; by default the one pinned here (`TEMPLATES`), never "the newest", so
  adding `eval_judge.v2.txt` changes no existing verdict until someone pins it.
- "judge": {"base_url": ..., "model": ..., "cache": "verdicts.jsonl", ...}: the judge for this item (any
  TeacherConfig field; "name" defaults to "judge"; JudgeSettings fields such as "temperature" are accepted too).
  Without it, the judge set by `configure_judge(TeacherConfig, cache_path)` is used: the eval runner calls that
  once from its judge option. `configure_judge` lives in this process only: `grade_many` sends non-inline
  graders to worker processes, so grade judge items with `rule_many` (which also sends them concurrently), or
  put the judge in the spec.
The problem's `reference` holds the reference notes the judge reads beside the rubric.

The model and template version are pinned (both are part of every request id); the judge sees the answer without its reasoning (the text after the last `</think>`; an answer cut off inside
`<think>` fails without asking); verdicts are cached on disk, keyed by (template version, model, item id, a hash
of the item's question/rubric/reference, a hash of the answer), through the teachers client (`judge/calls.py`'s
cache layout), so a rerun asks nothing again and a changed item or answer is asked afresh. A verdict that does
not parse, a failed request or a cut-off judge answer is a failed ruling with `error` set, never a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from branchmerge.errors import BranchmergeError
from branchmerge.judge.calls import (
    JudgeSettings,
    Template,
    aask,
    load_template,
    parse_label,
    parse_score,
    verdict,
)
from branchmerge.records import Trace
from branchmerge.teachers.config import TeacherConfig
from branchmerge.teachers.thinking import final_answer

TEMPLATES = {"verdict": ("eval_judge", 1), "score": ("eval_judge_score", 1)}  # pinned (name, version)
NO_JUDGE = (
    "judge grader: no judge is configured. Give the item's grader spec a judge "
    '({"type": "judge", ..., "judge": {"base_url": "http://HOST/v1", "model": "MODEL", "cache": "verdicts.jsonl"}}) '
    "or call branchmerge.judge.configure_judge(TeacherConfig(name=..., base_url=..., model=...), "
    "cache_path) first (the eval runner does this from its judge option)"
)

Item = tuple[str, str, dict[str, Any]]


@dataclass(frozen=True)
class Ruling:
    """The judge's ruling on one answer: pass or fail, what it said, and `error` when it could not rule."""

    passed: bool
    detail: str = ""
    error: str | None = None


@dataclass(frozen=True)
class JudgeSetup:
    """Who judges, where the verdicts are cached, and how the judge samples."""

    judge: TeacherConfig
    cache: Path
    settings: JudgeSettings

    @property
    def key(self) -> str:
        return json.dumps(
            [self.judge.model_dump(), str(self.cache), self.settings.model_dump()],
            sort_keys=True,
            default=str,
        )


_default: JudgeSetup | None = None


def configure_judge(
    judge: TeacherConfig | None, cache: str | Path | None = None, settings: JudgeSettings | None = None
) -> None:
    """Set the judge for items whose spec names none (or clear it with None). `cache` is the JSONL file of the
    judge's answers (created when missing)."""
    global _default
    if judge is None:
        _default = None
        return
    if cache is None:
        raise BranchmergeError(f"configure_judge: give a cache path for judge '{judge.name}' verdicts")
    _default = JudgeSetup(judge, Path(cache), settings or JudgeSettings())


def judge_configured() -> bool:
    """Whether a default judge is set (items whose spec names no judge can be graded)."""
    return _default is not None


@contextlib.contextmanager
def judging(judge: TeacherConfig, cache: str | Path, settings: JudgeSettings | None = None) -> Iterator[None]:
    """`judge` as the default judge inside the block; whichever was set before is put back afterwards."""
    global _default
    before = _default
    configure_judge(judge, cache, settings)
    try:
        yield
    finally:
        _default = before


def judge_spec(question: str, rubric: str, item: str, threshold: int | None = None) -> dict[str, Any]:
    """The grader spec of a judged item (what the mdr scenario and ethics domains write)."""
    spec: dict[str, Any] = {"type": "judge", "item": item, "question": question, "rubric": rubric}
    if threshold is not None:
        spec["threshold"] = threshold
    return spec


def _setup(spec: dict[str, Any]) -> JudgeSetup:
    given = spec.get("judge")
    if given is None:
        if _default is None:
            raise BranchmergeError(NO_JUDGE)
        return _default
    if not isinstance(given, dict):
        raise ValueError(
            f"judge grader: spec 'judge' must be a mapping (base_url, model, cache), not {given!r}"
        )
    fields = {"name": "judge", **given}
    cache = fields.pop("cache", None) or (_default.cache if _default else None)
    if cache is None:
        raise BranchmergeError(
            f"{NO_JUDGE}; the spec's judge has no 'cache' and no default cache is configured"
        )
    sampling = {k: fields.pop(k) for k in list(fields) if k in JudgeSettings.model_fields}
    try:
        return JudgeSetup(
            TeacherConfig.model_validate(fields), Path(cache), JudgeSettings.model_validate(sampling)
        )
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ValueError(f"judge grader: spec judge.{where}: {first['msg']}") from None


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class _Request:
    setup: JudgeSetup
    template: Template
    threshold: int | None
    rid: str  # the cache key: template, model, item, item hash, answer hash
    prompt: str


def _request(answer: str, reference: str, spec: dict[str, Any]) -> _Request | Ruling:
    """What to ask the judge, or the Ruling when there is nothing to ask."""
    missing = [f for f in ("question", "rubric") if not isinstance(spec.get(f), str) or not spec[f].strip()]
    if missing:
        raise ValueError(f"judge grader: the spec needs {' and '.join(missing)} (text)")
    threshold = spec.get("threshold")
    if threshold is not None and (not isinstance(threshold, int) or not 0 <= threshold <= 10):
        raise ValueError(f"judge grader: threshold {threshold!r} is not an integer from 0 to 10")
    setup = _setup(spec)
    name, version = TEMPLATES["verdict" if threshold is None else "score"]
    template = load_template(name, int(spec.get("prompt_version", version)))
    text, why_not = final_answer(answer)
    if why_not:
        return Ruling(False, why_not)
    item = str(spec.get("item", "-"))
    rid = ":".join(
        [
            template.tag,
            setup.judge.model,
            item,
            _digest(spec["question"], spec["rubric"], reference)[:12],
            _digest(text)[:16],
        ]
    )
    prompt = template.render(
        question=spec["question"], rubric=spec["rubric"], reference=reference, answer=text
    )
    return _Request(setup, template, threshold, rid, prompt)


def _reason(text: str) -> str:
    found = re.findall(r"<reason>(.*?)</reason>", text, flags=re.S | re.I)
    return " ".join(found[-1].split())[:200] if found else ""


def _rule(req: _Request, answer: Trace | None) -> Ruling:
    def parse(text: str) -> tuple[int | str | None, str | None]:
        if req.threshold is None:
            return parse_label(text, "verdict", ("pass", "fail"))
        return parse_score(text, 0, 10)

    v = verdict("judge", req.template, req.rid, answer, parse)
    who = f"judge {req.setup.judge.model} ({req.template.tag})"
    if v.value is None:
        return Ruling(False, f"{who}: {v.error}", error=v.error or "no verdict")
    reason = _reason(answer.answer) if answer else ""
    tail = f": {reason}" if reason else ""
    if req.threshold is None:
        return Ruling(v.value == "pass", f"{who}: {str(v.value).upper()}{tail}")
    score = int(v.value)
    passed = score >= req.threshold
    return Ruling(passed, f"{who}: score {score} {'>=' if passed else '<'} {req.threshold}{tail}")


async def _ask(setup: JudgeSetup, prompts: dict[str, str], show_progress: bool) -> dict[str, Trace]:
    """The judge's answers to {request id: prompt}, through the same cached, resumable path as the CoT judges."""
    return await aask(prompts, setup.judge, setup.cache, setup.settings, show_progress)


async def arule_many(items: Sequence[Item], show_progress: bool = False) -> list[Ruling]:
    """Rule on many (answer, reference, spec) judge items at once, in order: one batch per judge, sent
    concurrently through the teachers client (its `max_concurrency`, rate limits and retries apply)."""
    requests = [_request(*item) for item in items]
    groups: dict[str, tuple[JudgeSetup, dict[str, str]]] = {}
    for r in requests:
        if isinstance(r, _Request):
            groups.setdefault(r.setup.key, (r.setup, {}))[1][r.rid] = r.prompt
    keys = list(groups)
    found = await asyncio.gather(*(_ask(*groups[k], show_progress) for k in keys))
    answers = dict(zip(keys, found, strict=True))
    return [r if isinstance(r, Ruling) else _rule(r, answers[r.setup.key].get(r.rid)) for r in requests]


def rule_many(items: Sequence[Item], show_progress: bool = False) -> list[Ruling]:
    """`arule_many` from synchronous code (also from inside a running event loop, through a helper thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arule_many(items, show_progress))
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, arule_many(items, show_progress)).result()
