"""Judge-scored processors (difficulty, rv_cd, rewrite), verify policies and the presets, against fake judges
whose answers are chosen per prompt: well-formed, nonsense, conflicting, failing."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from branchmerge.cli.main import app
from branchmerge.cot.base import StepContext
from branchmerge.cot.registry import PRESETS, ProcessOptions, process_traces, resolve_steps
from branchmerge.errors import BranchmergeError
from branchmerge.judge.calls import load_template, parse_label, parse_score
from branchmerge.records import Problem, Trace, Verdict, read_jsonl, write_jsonl
from branchmerge.teachers.config import TeacherConfig
from branchmerge.teachers.serve import running_app
from fakes import fake_openai, ok

PROBLEMS = {
    f"p{i}": Problem(
        id=f"p{i}", domain="add" if i < 3 else "sort", question=f"What is {i} + {i}?", reference=str(2 * i)
    )
    for i in range(5)
}


def trace(pid: str, teacher: str = "t", sample: int = 0, answer: str | None = None, **kw: Any) -> Trace:
    ref = PROBLEMS[pid].reference
    return Trace(
        problem_id=pid,
        teacher=teacher,
        model="m",
        sample=sample,
        temperature=0.6,
        reasoning=kw.pop("reasoning", f"{pid} reasoning " * (sample + 1)),
        answer=ref if answer is None else answer,
        **kw,
    )


def judge_answer(prompt: str) -> str:
    """The fake judge: difficulty by problem number (p4 gets nonsense), RV = words in the reasoning mod 10
    (p3 conflicting), CD 5 (p2 out of range), rewrites keep the answer except for p1 (wrong)."""
    pid = re.search(r"What is (\d+)", prompt).group(1)  # type: ignore[union-attr]
    if "rating how hard a problem is" in prompt:
        return {
            "0": "<difficulty>easy</difficulty>",
            "1": "Medium",
            "2": "<difficulty>hard</difficulty>",
        }.get(pid, "I would say it is quite tricky")
    if "Reasoning Verbosity" in prompt:
        if pid == "3":
            return "<score>2</score> or maybe <score>7</score>"
        reasoning = prompt.split("Chain of thought:")[1].split("Final answer:")[0]
        return f"Let me see.\n<score>{len(reasoning.split()) % 10}</score>"
    if "Cognitive Difficulty" in prompt:
        return "<score>12</score>" if pid == "2" else "<score>5</score>"
    if "Rewrite it" in prompt:
        answer = "999" if pid == "1" else str(2 * int(pid))
        return f"<think>\nshort {pid}\n</think>\n\n{answer}"
    raise AssertionError(prompt[:80])


@pytest.fixture
def judge() -> Iterator[tuple[TeacherConfig, list[dict[str, Any]]]]:
    def answer(_: int, body: dict[str, Any]) -> JSONResponse:
        return ok(body, {"role": "assistant", "content": judge_answer(body["messages"][-1]["content"])})

    fake, calls = fake_openai(answer)
    with running_app(fake) as root:
        yield TeacherConfig(name="judge", base_url=f"{root}/v1", model="j", max_retries=0), calls


def run(steps: str, traces: list[Trace], out: Path, judge: TeacherConfig | None = None, **options: Any):
    ctx = StepContext(out.parent, out.stem, judge=judge, show_progress=False)
    opts = ProcessOptions.model_validate(options)
    counts = process_traces(resolve_steps(steps), traces, PROBLEMS, opts, out, ctx)
    return read_jsonl(out, Trace), counts


def test_parsers_take_one_clear_value_and_explain_everything_else() -> None:
    assert parse_score("thinking...\n<score>7</score>") == (7, None)
    assert parse_score(" 4. ") == (4, None)
    assert parse_score("<score>3</score> <SCORE> 3 </SCORE>") == (3, None)
    assert parse_score("<score>2</score><score>7</score>")[1] == "conflicting <score> values ['2', '7']"
    assert parse_score("<score>12</score>")[1] == "score '12' is not an integer from 0 to 9"
    assert parse_score("<score>high</score>")[0] is None
    assert parse_score("I'd give it a 7")[1] == "no <score>…</score> in the answer"
    assert parse_score("") == (None, "no <score>…</score> in the answer")
    levels = ("easy", "medium", "hard")
    assert parse_label("<difficulty>Hard</difficulty>", "difficulty", levels) == ("hard", None)
    assert parse_label("medium.", "difficulty", levels) == ("medium", None)
    assert parse_label("<difficulty>trivial</difficulty>", "difficulty", levels)[0] is None


def test_templates_are_versioned_and_render_latex_without_escaping() -> None:
    rv = load_template("rv")
    assert (rv.name, rv.version, rv.tag) == ("rv", 1, "rv.v1")
    text = rv.render(question=r"Find $\frac{1}{2}$ of {x}", reasoning="r", answer="a")
    assert r"Find $\frac{1}{2}$ of {x}" in text and "$question" not in text
    with pytest.raises(BranchmergeError, match="no version 9"):
        load_template("rv", 9)
    with pytest.raises(BranchmergeError, match="no prompt template named 'nope'"):
        load_template("nope")


def test_difficulty_by_judge_labels_traces_records_failures_and_asks_once(judge, tmp_path: Path) -> None:
    cfg, calls = judge
    traces = [trace(p, sample=s) for p in PROBLEMS for s in (0, 1)]
    kept, [counts] = run("difficulty", traces, tmp_path / "d.jsonl", cfg)
    assert len(calls) == 5  # one request per problem, not per trace
    got = {t.problem_id: t.difficulty for t in kept}
    assert got == {"p0": "easy", "p1": "medium", "p2": "hard", "p3": None, "p4": None}
    assert len(kept) == 10 and counts.removed == {}
    assert counts.flagged == {"no difficulty (why: d.verdicts.jsonl)": 4}
    assert counts.note == "easy 2, medium 2, hard 2"
    verdicts = {v.target: v for v in read_jsonl(tmp_path / "d.verdicts.jsonl", Verdict)}
    assert (
        verdicts["p3"].value is None and verdicts["p3"].error == "no <difficulty>…</difficulty> in the answer"
    )
    assert verdicts["p0"].template == "difficulty.v1" and verdicts["p0"].judge == "judge"
    run("difficulty", traces, tmp_path / "d.jsonl", cfg)
    assert len(calls) == 5  # answers come from the cache


def test_rv_cd_scores_each_trace_and_never_fills_a_failed_score(judge, tmp_path: Path) -> None:
    cfg, calls = judge
    traces = [trace(p) for p in PROBLEMS]
    kept, [counts] = run("rv_cd", traces, tmp_path / "s.jsonl", cfg)
    assert len(calls) == 10
    by = {t.problem_id: (t.rv, t.cd) for t in kept}
    assert by["p0"] == (2, 5)  # "p0 reasoning" = 2 words
    assert by["p2"] == (2, None) and by["p3"] == (None, 5)
    assert counts.flagged == {
        "no cd score (why: s.verdicts.jsonl)": 1,
        "no rv score (why: s.verdicts.jsonl)": 1,
    }
    errors = {
        (v.step, v.target): v.error for v in read_jsonl(tmp_path / "s.verdicts.jsonl", Verdict) if v.error
    }
    assert errors == {
        ("cd", "p2|t|0"): "score '12' is not an integer from 0 to 9",
        ("rv", "p3|t|0"): "conflicting <score> values ['2', '7']",
    }


def test_rewrite_replaces_verified_rewrites_and_drops_wrong_ones(judge, tmp_path: Path) -> None:
    cfg, calls = judge
    levels = {"p0": "easy", "p1": "hard", "p2": "hard", "p3": "medium", "p4": None}
    traces = [trace(p, difficulty=d, verified=True, rv=3) for p, d in levels.items()]
    kept, [counts] = run("rewrite", traces, tmp_path / "r.jsonl", cfg)
    assert len(calls) == 3  # easy and hard only
    assert [(t.problem_id, t.teacher) for t in kept] == [
        ("p0", "t+rw"),
        ("p1", "t"),  # the rewrite answered 999: dropped, original kept
        ("p2", "t+rw"),
        ("p3", "t"),
        ("p4", "t"),
    ]
    new = kept[0]
    assert (new.reasoning, new.answer, new.rewritten_from, new.difficulty) == (
        "short 0",
        "0",
        "p0|t|0",
        "easy",
    )
    assert new.verified is True and new.rv is None  # the old text's scores do not carry over
    assert counts.flagged == {
        "easy rewritten": 1,
        "hard rewrite dropped, original kept": 1,
        "hard rewritten": 1,
    }
    wrong = [v for v in read_jsonl(tmp_path / "r.verdicts.jsonl", Verdict) if v.error]
    assert [v.target for v in wrong] == ["p1|t|0"] and "failed verification" in (wrong[0].error or "")
    both, _ = run("rewrite", traces, tmp_path / "r2.jsonl", cfg, rewrite={"keep_original": True})
    assert len(both) == 7


def test_difficulty_by_student_pass_rate(tmp_path: Path) -> None:
    right = {"0": 4, "1": 2, "2": 0}  # of 4 samples

    def student(_: int, body: dict[str, Any]) -> JSONResponse:
        i = re.search(r"What is (\d+)", body["messages"][-1]["content"]).group(1)  # type: ignore[union-attr]
        if i == "3":
            return JSONResponse({"error": {"message": "boom"}}, status_code=400)
        answers = [str(2 * int(i)) if j < right.get(i, 4) else "7" for j in range(body["n"])]
        msgs = [
            {"index": j, "message": {"content": a}, "finish_reason": "stop"} for j, a in enumerate(answers)
        ]
        return JSONResponse(
            {"model": "s", "choices": msgs, "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
        )

    fake, _ = fake_openai(student)
    with running_app(fake) as root:
        cfg = TeacherConfig(name="student", base_url=f"{root}/v1", model="s", max_retries=0)
        ctx = StepContext(tmp_path, "d", student=cfg, show_progress=False)
        opts = ProcessOptions.model_validate({"difficulty": {"method": "student", "k": 4}})
        process_traces(
            ["difficulty"], [trace(p) for p in PROBLEMS], PROBLEMS, opts, tmp_path / "d.jsonl", ctx
        )
    got = {t.problem_id: t.difficulty for t in read_jsonl(tmp_path / "d.jsonl", Trace)}
    assert got == {"p0": "easy", "p1": "medium", "p2": "hard", "p3": None, "p4": "easy"}
    v = {v.target: v for v in read_jsonl(tmp_path / "d.verdicts.jsonl", Verdict)}
    assert v["p1"].raw == "2/4 passed" and "student samples incomplete" in (v["p3"].error or "")


def test_verify_policies(tmp_path: Path) -> None:
    traces = [
        trace("p0", sample=0, reasoning="long long long"),
        trace("p0", sample=1, reasoning="short"),
        trace("p0", sample=2, answer="wrong"),
        trace("p0", teacher="u", sample=0),
        trace("p1", answer="wrong"),
    ]
    flagged, [c] = run("verify", traces, tmp_path / "a.jsonl", verify={"policy": "keep-flagged"})
    assert [t.verified for t in flagged] == [True, True, False, True, False]
    assert c.removed == {} and c.flagged == {"wrong (kept, verified=false)": 2}
    best, [c] = run("verify", traces, tmp_path / "b.jsonl", verify={"policy": "best-of-n"})
    assert [(t.teacher, t.sample) for t in best] == [("t", 1), ("u", 0)]
    assert c.removed == {"wrong": 2, "not the best of its teacher's samples": 1}
    assert {r["teacher"]: r["accuracy"] for r in c.table if r["domain"] == "add"} == {"t": 0.5, "u": 1.0}


def test_judge_steps_refuse_to_start_without_a_judge(tmp_path: Path) -> None:
    with pytest.raises(BranchmergeError, match="rv_cd, rewrite: needs a judge endpoint"):
        run("rv_cd,rewrite", [trace("p0")], tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()
    with pytest.raises(BranchmergeError, match="'nope' is not a processor or preset"):
        resolve_steps("verify,nope")


def test_adaptive_thinking_preset_from_the_cli(judge, tmp_path: Path) -> None:
    cfg, _ = judge
    traces = [trace(p, sample=s, reasoning="w " * (3 * s + 2)) for p in PROBLEMS for s in (0, 1)]
    traces.append(trace("p1", sample=2, answer="wrong"))
    write_jsonl(tmp_path / "t.jsonl", traces)
    write_jsonl(tmp_path / "p.jsonl", PROBLEMS.values())
    args = [
        "process",
        "adaptive-thinking",
        str(tmp_path / "t.jsonl"),
        "--problems",
        str(tmp_path / "p.jsonl"),
    ]
    args += [
        "--out",
        str(tmp_path / "out.jsonl"),
        "--judge",
        cfg.urls[0],
        "--judge-model",
        "j",
        "--rv",
        "0:3",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    kept = read_jsonl(tmp_path / "out.jsonl", Trace)
    # sample 0 has 2 words (RV 2), sample 1 has 5 (RV 5); p3's RV conflicted -> unscored
    assert sorted((t.problem_id, t.sample) for t in kept) == [("p0", 0), ("p1", 0), ("p2", 0), ("p4", 0)]
    steps = sorted(p.name for p in (tmp_path / "out.steps").glob("*.counts.json"))
    assert steps == [f"{i:02d}-{s}.counts.json" for i, s in enumerate(PRESETS["adaptive-thinking"], start=1)]
    sample = json.loads((tmp_path / "out.steps" / "05-sample.counts.json").read_text())
    assert sample["removed"] == {"no rv score": 2, "rv outside 0-3": 4}
    decon = json.loads((tmp_path / "out.steps" / "03-decontaminate.counts.json").read_text())
    assert decon["note"] == "skipped: no benchmark files given"
    assert "removed 1: wrong" in result.output and "marked 2: no rv score" in result.output


def test_empty_traces_missing_references_and_unreadable_references_are_counted_not_crashed(
    judge, tmp_path: Path
) -> None:
    cfg, calls = judge
    problems = dict(PROBLEMS)
    problems["p1"] = PROBLEMS["p1"].model_copy(update={"reference": ""})
    problems["p2"] = PROBLEMS["p2"].model_copy(update={"reference": "four", "grader": {"type": "numeric"}})
    traces = [
        trace("p0", reasoning="", answer=""),  # empty
        trace("p1", answer="2"),  # problem without reference
        trace("p2", answer="4"),  # numeric grader cannot read "four"
        trace("p3"),
    ]
    opts = ProcessOptions.model_validate({"verify": {"policy": "keep-flagged"}})
    ctx = StepContext(tmp_path, "x", judge=cfg, show_progress=False)
    [v, s] = process_traces(["verify", "rv_cd"], traces, problems, opts, tmp_path / "x.jsonl", ctx)
    assert v.flagged == {
        "empty (kept, verified=false)": 1,
        "no reference (kept, verified=false)": 1,
        "grader error (kept, verified=false)": 1,
    }
    assert len(calls) == 6  # the empty trace is not sent to the judge
    verdicts = read_jsonl(tmp_path / "x.steps" / "02-rv_cd.verdicts.jsonl", Verdict)
    assert {(x.step, x.error) for x in verdicts if x.target == "p0|t|0"} == {
        ("rv", "empty reasoning: not asked"),
        ("cd", "empty reasoning: not asked"),
    }
    bad = {"p0": PROBLEMS["p0"].model_copy(update={"grader": {"type": "mathh"}})}
    with pytest.raises(BranchmergeError, match="problem 'p0': grader type 'mathh' is not known"):
        process_traces(["verify"], [trace("p0")], bad, ProcessOptions(), tmp_path / "y.jsonl")


def test_slow_thinking_preset_chains_verify_to_rewrite(judge, tmp_path: Path) -> None:
    cfg, _ = judge
    bench = tmp_path / "bench.jsonl"
    write_jsonl(bench, [PROBLEMS["p4"].model_copy(update={"id": "b1"})])
    traces = [trace(p) for p in PROBLEMS] + [trace("p0", sample=1, answer="5")]
    kept, counts = run(
        "slow-thinking", traces, tmp_path / "st.jsonl", cfg, decontaminate={"benchmarks": [bench]}
    )
    assert [c.step for c in counts] == PRESETS["slow-thinking"]
    assert [sum(c.after.values()) for c in counts] == [5, 5, 4, 4, 4]
    assert counts[2].removed == {"13-gram in question": 1}
    # p0 (easy) and p2 (hard) were rewritten; p1 is medium; p3 has no difficulty (the judge's answer is nonsense)
    assert [(t.problem_id, t.teacher, t.difficulty) for t in kept] == [
        ("p0", "t+rw", "easy"),
        ("p1", "t", "medium"),
        ("p2", "t+rw", "hard"),
        ("p3", "t", None),
    ]


def test_verify_grades_judged_problems_with_the_steps_judge(tmp_path: Path) -> None:
    """mdr scenario / ethics problems are graded by a judge: the verify step uses the process judge for them.
    Before, the step configured no judge, so it failed on such problems even when the process had one."""
    from branchmerge.judge import judge_spec

    spec = judge_spec("Should the plan go ahead?", "Pass when the answer weighs both risks.", "ethics-1", 5)
    problems = {
        "e1": Problem(
            id="e1",
            domain="ethics",
            question="Should the plan go ahead?",
            reference="both risks",
            grader=spec,
        )
    }
    traces = [
        Trace(problem_id="e1", teacher="t", model="m", sample=i, temperature=0.6, reasoning="r", answer=a)
        for i, a in enumerate(["weighs both risks: good", "just do it"])
    ]

    def answer(_: int, body: dict[str, Any]) -> JSONResponse:
        good = "good" in body["messages"][-1]["content"]
        return ok(body, {"role": "assistant", "content": f"<score>{8 if good else 2}</score>"})

    fake, calls = fake_openai(answer)
    opts = ProcessOptions()
    with running_app(fake) as root:
        cfg = TeacherConfig(name="judge", base_url=f"{root}/v1", model="j", max_retries=0)
        ctx = StepContext(tmp_path, "with", judge=cfg, show_progress=False)
        counts = process_traces(["verify"], traces, problems, opts, tmp_path / "with.jsonl", ctx)
    assert [t.answer for t in read_jsonl(tmp_path / "with.jsonl", Trace)] == ["weighs both risks: good"]
    assert counts[-1].removed == {"wrong": 1} and len(calls) == 2
    alone = StepContext(tmp_path, "without", show_progress=False)
    with pytest.raises(BranchmergeError, match="no judge is configured"):
        process_traces(["verify"], traces, problems, opts, tmp_path / "without.jsonl", alone)


def test_every_processor_with_options_has_its_section_and_no_section_lacks_a_processor() -> None:
    """ProcessOptions is kept by hand beside PROCESSORS: a processor added to one and not the other fails here."""
    from branchmerge.cot.registry import PROCESSORS

    with_options = {name for name, p in PROCESSORS.items() if p.options is not None}
    sections = set(ProcessOptions.model_fields) - {"judging"}
    assert with_options == sections
    assert all(ProcessOptions.model_fields[n].annotation is PROCESSORS[n].options for n in sections)
    assert all(PROCESSORS[name].name == name for name in PROCESSORS)
    assert {name for name, p in PROCESSORS.items() if p.needs_judge(ProcessOptions().of(name))} == {
        "difficulty",
        "rv_cd",
        "rewrite",
    }
    student = ProcessOptions.model_validate({"difficulty": {"method": "student"}})
    assert not PROCESSORS["difficulty"].needs_judge(student.of("difficulty"))
