"""mdr domains science, causal, scenario, ethics and writing; the constraints grader; the LLM-judge grader against
a fake OpenAI-compatible judge (verdicts, stripped reasoning, cache, unparsable answers, no judge)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.responses import JSONResponse

from branchmerge.errors import BranchmergeError
from branchmerge.evaluate.mdr import base, causal, ethics, scenario, science, writing
from branchmerge.graders import grade
from branchmerge.graders.constraints import describe
from branchmerge.graders.judge import judge_many
from branchmerge.judge import configure_judge, judge_spec
from branchmerge.teachers.config import TeacherConfig
from branchmerge.teachers.serve import running_app
from fakes import fake_openai, ok

DOMAINS = {"science": science, "causal": causal, "scenario": scenario, "ethics": ethics, "writing": writing}

# ----------------------------------------------------------------------------------------- constraints


def cons(*constraints: dict[str, Any]) -> dict[str, Any]:
    return {"type": "constraints", "constraints": list(constraints)}


POEM = "Salt on the wind,\nEvery gull is calling.\nA boat comes home."


@pytest.mark.parametrize(
    ("constraint", "good", "bad", "detail"),
    [
        ({"kind": "min_words", "n": 3}, "one two three", "one two", "has 2 words"),
        ({"kind": "max_words", "n": 3}, "don't well-lit go", "a b c d", "has 4 words"),
        ({"kind": "words", "n": 2}, "two words.", "just three words", "has 3 words"),
        ({"kind": "lines", "n": 3}, POEM, "one line", "has 1 line"),
        ({"kind": "min_lines", "n": 2}, POEM, "one line", "has 1 line"),
        ({"kind": "max_lines", "n": 1}, "a\n\n", POEM, "has 3 lines"),
        ({"kind": "sentences", "n": 2}, POEM, "One. Two! Three?", "has 3 sentences"),
        ({"kind": "min_sentences", "n": 2}, "One. Two", "Only one here.", "has 1 sentence"),
        ({"kind": "max_sentences", "n": 1}, "Pi is 3.14 today.", "One. Two.", "has 2 sentences"),
        ({"kind": "include", "words": ["gull", "boat"]}, POEM, "A gull's boats", "missing 'gull', 'boat'"),
        ({"kind": "exclude", "words": ["sea", "blue"]}, "Seagulls, bluer", "The Sea is wide", "uses 'sea'"),
        (
            {"kind": "acrostic", "word": "sea"},
            POEM,
            "Sun\nAir\nEnd\nMore",
            "the first letters of the lines spell 'SAEM'",
        ),
        ({"kind": "starts_with", "text": "Salt on"}, POEM, "A salt on", "it starts with 'A salt'"),
        ({"kind": "ends_with", "text": "comes home"}, POEM + '!"', "home comes", "it ends with 'home comes'"),
        ({"kind": "no_letter", "letter": "E"}, "A cat sat.", "The cat sat.", "uses 'e' (in 'The')"),
    ],
)
def test_each_constraint_kind_passes_and_fails_with_a_detail(constraint, good, bad, detail) -> None:
    spec = cons(constraint)
    assert grade(good, "", spec).passed, grade(good, "", spec).detail
    g = grade(bad, "", spec)
    assert not g.passed and g.error is None
    assert g.detail == f"constraint 1 ({constraint['kind']}: {describe(constraint)}) broken: {detail}"


def test_constraints_detail_names_the_first_broken_one_and_bad_specs_are_errors() -> None:
    spec = cons(
        {"kind": "max_words", "n": 50}, {"kind": "lines", "n": 2}, {"kind": "include", "words": ["x"]}
    )
    g = grade(POEM, "", spec)
    assert not g.passed and g.detail.startswith(
        "constraint 2 (lines: exactly 2 non-empty lines) broken: has 3"
    )
    assert not grade("   ", "", spec).passed and grade("  ", "", spec).detail == "empty answer"
    with pytest.raises(
        ValueError, match=r"constraint 1 has kind 'rhyme' \(known: min_words, .*no_letter, topic, prose\)"
    ):
        grade("x", "", cons({"kind": "rhyme"}))
    with pytest.raises(ValueError, match=r"constraint 2 \(acrostic\) needs word"):
        grade("x", "", cons({"kind": "lines", "n": 1}, {"kind": "acrostic"}))
    with pytest.raises(ValueError, match="non-empty 'constraints' list"):
        grade("x", "", {"type": "constraints"})
    assert describe({"kind": "ends_with", "text": "again"}) == "end with the word 'again'"


# ---------------------------------------------------------------------------------------------- judge


def judge_reply(prompt: str) -> str:
    """The fake judge decides by the graded answer (the text between the markers)."""
    answer = prompt.split("<<<ANSWER\n", 1)[1].split("\nANSWER>>>", 1)[0]
    if "score me" in answer:
        return "<reason>Mostly there.</reason>\n<score>7</score>"
    if "GOOD" in answer:
        return "<reason>It meets every point.</reason>\n<verdict>PASS</verdict>"
    if "BAD" in answer:
        return "<reason>No conclusion.</reason>\n<verdict>FAIL</verdict>"
    return "Hmm, it is a decent answer I suppose."


@pytest.fixture
def judge(tmp_path: Path) -> Iterator[tuple[TeacherConfig, list[dict[str, Any]], Path]]:
    def answer(_: int, body: dict[str, Any]) -> JSONResponse:
        prompt = body["messages"][-1]["content"]
        if "FAIL-REQUEST" in prompt:
            return JSONResponse({"error": {"message": "bad request"}}, status_code=400)
        return ok(body, {"role": "assistant", "content": judge_reply(prompt)})

    fake, calls = fake_openai(answer)
    with running_app(fake) as root:
        cfg = TeacherConfig(name="judge", base_url=f"{root}/v1", model="judge-m1", max_retries=0)
        configure_judge(cfg, tmp_path / "verdicts.jsonl")
        try:
            yield cfg, calls, tmp_path / "verdicts.jsonl"
        finally:
            configure_judge(None)


SPEC = judge_spec("Should Ann tell her friend?", "1. Names the stakeholders.\n2. Concludes.", "mdr-ethics-L1")


def sent(call: dict[str, Any]) -> str:
    return call["body"]["messages"][-1]["content"]


def test_judge_parses_pass_and_fail_and_pins_model_and_template(judge) -> None:
    cfg, calls, _ = judge
    g = grade("A GOOD answer.", "notes: honesty vs kindness", SPEC)
    assert g.passed and g.detail == "judge judge-m1 (eval_judge.v1): PASS: It meets every point."
    g = grade("A BAD answer.", "notes", SPEC)
    assert not g.passed and g.error is None and g.detail.endswith("FAIL: No conclusion.")
    assert [c["body"]["model"] for c in calls] == ["judge-m1", "judge-m1"]
    prompt = sent(calls[0])
    assert "Should Ann tell her friend?" in prompt and "1. Names the stakeholders." in prompt
    assert "notes: honesty vs kindness" in prompt and calls[0]["body"]["temperature"] == 0.0
    g = grade("please score me", "notes", {**SPEC, "threshold": 8})
    assert not g.passed and g.detail == "judge judge-m1 (eval_judge_score.v1): score 7 < 8: Mostly there."
    assert grade("please score me", "notes", {**SPEC, "threshold": 7}).passed
    assert "<score>" in sent(calls[-1]) or "integer from 0 to 10" in sent(calls[-1])


def test_judge_sees_the_answer_without_its_reasoning(judge) -> None:
    _, calls, _ = judge
    g = grade("<think>\nsecret chain, maybe BAD?\n</think>\n\nThe GOOD final answer.", "n", SPEC)
    assert g.passed
    body = str(calls[0]["body"])
    assert "<think>" not in body and "</think>" not in body and "secret chain" not in body
    assert "The GOOD final answer." in sent(calls[0])
    g = grade("<think>\nstill thinking GOOD when the tokens ran out", "n", SPEC)  # cut off: nothing to judge
    assert not g.passed and g.detail == "no answer: the output was cut off inside <think>"
    assert len(calls) == 1


def test_judge_verdicts_are_cached_by_model_template_item_and_answer(judge, tmp_path: Path) -> None:
    cfg, calls, cache = judge
    first = grade("A GOOD answer.", "n", SPEC)
    assert len(calls) == 1
    assert grade("A GOOD answer.", "n", SPEC) == first  # the same answer: from the cache
    # the reasoning is not part of the key
    assert grade("<think>other reasoning</think>A GOOD answer.", "n", SPEC) == first
    assert len(calls) == 1
    configure_judge(cfg, cache)  # a new run with the same judge and cache asks nothing
    assert grade("A GOOD answer.", "n", SPEC).passed and len(calls) == 1
    grade("Another GOOD answer.", "n", SPEC)
    grade("A GOOD answer.", "n", {**SPEC, "item": "mdr-ethics-L2"})
    grade("A GOOD answer.", "n", {**SPEC, "rubric": "1. Something else."})
    configure_judge(cfg.model_copy(update={"model": "judge-m2"}), cache)  # another model: asked again
    grade("A GOOD answer.", "n", SPEC)
    assert len(calls) == 5 and calls[-1]["body"]["model"] == "judge-m2"
    ids = [line for line in cache.read_text().splitlines() if "judge-m2" in line]
    assert len(ids) == 1 and '"problem_id":"eval_judge.v1:judge-m2:mdr-ethics-L1:' in ids[0].replace(" ", "")


def test_unparsable_verdicts_and_failed_requests_are_errors_never_passes(judge) -> None:
    _, calls, _ = judge
    g = grade("A so-so answer.", "n", SPEC)
    assert not g.passed and g.error == "no <verdict>…</verdict> in the answer"
    assert g.detail == "judge judge-m1 (eval_judge.v1): no <verdict>…</verdict> in the answer"
    g = grade("FAIL-REQUEST", "n", SPEC)
    assert not g.passed and g.error is not None and g.error.startswith("request failed")
    assert len(calls) == 2
    with pytest.raises(ValueError, match="needs rubric"):
        grade("x", "n", {"type": "judge", "question": "q"})
    with pytest.raises(ValueError, match="threshold 11"):
        grade("x", "n", {**SPEC, "threshold": 11})


def test_no_judge_configured_is_a_clear_error() -> None:
    configure_judge(None)
    with pytest.raises(BranchmergeError, match=r"no judge is configured.*\"judge\".*configure_judge"):
        grade("A GOOD answer.", "n", SPEC)


def test_judge_many_batches_concurrently_with_a_judge_from_the_spec(judge, tmp_path: Path) -> None:
    cfg, calls, _ = judge
    configure_judge(None)  # only the spec's judge
    inline = {
        "base_url": cfg.base_url,
        "model": "judge-m1",
        "max_retries": 0,
        "cache": str(tmp_path / "j.jsonl"),
    }
    spec = {**SPEC, "judge": inline}
    answers = ["GOOD 1", "BAD 2", "GOOD 3", "so-so 4", "<think>x", "GOOD 1"]
    grades = judge_many([(a, "n", spec) for a in answers])
    assert [g.passed for g in grades] == [True, False, True, False, False, True]
    assert grades[3].error and grades[4].detail.startswith("no answer")
    assert len(calls) == 4  # one request per distinct answer; the truncated one is not sent

    async def inside_a_loop() -> bool:  # an async caller can use the sync API too
        return judge_many([("GOOD 1", "n", spec)])[0].passed

    assert asyncio.run(inside_a_loop()) and len(calls) == 4


# -------------------------------------------------------------------------------------------- domains


@pytest.mark.parametrize("name", DOMAINS)
def test_domain_has_ten_fixed_items_and_a_deterministic_generator(name: str) -> None:
    # domain_names() collects the built-in domains first: DOMAINS is empty until something has asked for them
    assert name in base.MODULES and name in base.domain_names() and base.DOMAINS[name].name == name
    module = DOMAINS[name]
    fixed = module.items()
    assert [p.id for p in fixed] == [f"mdr-{name}-L{lvl}" for lvl in range(1, 11)]
    assert [p.level for p in fixed] == list(range(1, 11))
    assert all(p.source == "mdr" and p.domain == name and p.question and p.reference for p in fixed)
    for level in (1, 5, 10):
        p = module.generate(level, 3)
        assert p.id == f"mdr-{name}-L{level}-s3" and p.level == level and p.source == "mdr"
        assert p == module.generate(level, 3)
        assert any(module.generate(level, s).question != p.question for s in range(4, 8))


def test_science_and_causal_references_pass_and_wrong_answers_fail() -> None:
    for module in (science, causal):
        problems = module.items() + [module.generate(lvl, s) for lvl in range(1, 11) for s in range(3)]
        for p in problems:
            right = grade(f"Working it out...\nAnswer: {p.reference}", p.reference, p.grader)
            assert right.passed, (p.id, right.detail)
            wrong = {"yes": "no", "no": "yes", "A": "B", "B": "C", "C": "D", "D": "A"}.get(p.reference)
            if wrong is None:
                wrong = f"{p.reference}7" if re.fullmatch(r"-?[\d.]+", p.reference) else "banana"
            assert not grade(f"Answer: {wrong}", p.reference, p.grader).passed, p.id
            assert not grade(p.reference, p.reference, p.grader).passed or p.grader["type"] == "choice"


def test_science_numbers_match_in_any_equal_form_only() -> None:
    spec = science.answer_spec("number", "2058")
    for ok_form in ("Answer: 2058", "Answer: 2,058 m", "answer: **2058.0** metres.", "x\nFinal answer: 2058"):
        assert grade(ok_form, "2058", spec).passed, ok_form
    for bad in ("Answer: 20580", "Answer: 2058 or 2100", "Answer: 2058\nno wait, 12", "2058"):
        assert not grade(bad, "2058", spec).passed, bad
    spec = science.answer_spec("number", "-5.5")
    assert grade("Answer: -5.50", "-5.5", spec).passed and not grade("Answer: 5.5", "-5.5", spec).passed
    assert causal.items()[9].reference == "4.6"  # the toll model, worked by hand in the module


def test_writing_hand_written_texts_and_generated_witnesses_meet_their_constraints() -> None:
    for p in writing.items() + [writing.generate(lvl, s) for lvl in range(1, 11) for s in range(5)]:
        g = grade(p.reference, p.reference, p.grader)
        assert g.passed, (p.id, g.detail)
        kinds = [c["kind"] for c in p.grader["constraints"]]
        assert all(describe(c) in p.question for c in p.grader["constraints"])
        if "exclude" in kinds:
            banned = next(c for c in p.grader["constraints"] if c["kind"] == "exclude")["words"][0]
            assert not grade(f"{p.reference} {banned}", "", p.grader).passed
    hard = writing.generate(10, 0).grader["constraints"]
    assert {"acrostic", "no_letter"} <= {c["kind"] for c in hard} and len(hard) >= 9
    assert len(writing.generate(1, 0).grader["constraints"]) <= 4  # one or two constraints + topic + prose


def test_writing_fails_refusals_word_salad_and_other_topics() -> None:
    """Texts that meet a loose word limit but are not the piece: each item's content checks fail them."""
    salad = "amber birch copper dune ember falcon granite harbor lantern meadow"
    for p in writing.items() + [writing.generate(lvl, s) for lvl in range(1, 11) for s in range(3)]:
        topic = next(c for c in p.grader["constraints"] if c["kind"] == "topic")["words"]
        refusal = f"I'm sorry, but I can't write a piece about the {topic[0]} with these rules."
        for bad, why in ((refusal, "refusal"), (f"{salad} {topic[0]}", "list of words")):
            g = grade(bad, "", {"type": "constraints", "constraints": [{"kind": "prose"}]})
            assert not g.passed and why in g.detail, (p.id, bad, g.detail)
            assert not grade(bad, "", p.grader).passed
    off_topic = "The tax office opened at nine, and the clerk filed the forms in a grey box."
    g = grade(off_topic, "", {"type": "constraints", "constraints": writing.items()[0].grader["constraints"]})
    assert not g.passed and "names none of" in g.detail
    lamp = {"type": "constraints", "constraints": [{"kind": "topic", "words": ["lamp"]}]}
    assert grade("Two lamps glow on the quay.", "", lamp).passed  # a plural names the topic too
    assert not grade("A lampshade on the quay.", "", lamp).passed


@pytest.mark.parametrize("module", [scenario, ethics])
def test_judged_domains_carry_a_rubric_that_grows_with_the_level(module) -> None:
    for p in module.items() + [module.generate(lvl, 0) for lvl in range(1, 11)]:
        spec = p.grader
        assert spec["type"] == "judge" and spec["question"] == p.question and spec["item"] == p.id
        assert spec["rubric"].startswith("1. ") and "threshold" not in spec
    sizes = [p.grader["rubric"].count("\n") for p in (module.generate(lvl, 0) for lvl in range(1, 11))]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]
    if module is ethics:
        assert all("Any conclusion passes" in p.grader["rubric"] for p in module.items())


def test_grade_many_sends_judge_items_to_the_configured_judge_in_one_batch(judge) -> None:
    from branchmerge.graders import grade_many

    _, calls, _ = judge
    items = [
        ("A GOOD answer.", "n", SPEC),
        (
            "exactly five words here ok",
            "",
            {"type": "constraints", "constraints": [{"kind": "max_words", "n": 5}]},
        ),
        ("A BAD answer.", "n", SPEC),
    ]
    grades = grade_many(items, workers=2)
    assert [g.passed for g in grades] == [True, True, False] and len(calls) == 2


def test_a_number_graded_to_some_decimals_says_so_in_the_question() -> None:
    for module in (science, causal):
        for p in module.items() + [module.generate(lvl, s) for lvl in range(1, 11) for s in range(10)]:
            decimals = len(p.reference.partition(".")[2])
            if p.grader["type"] == "regex" and decimals:
                places = f"to {decimals} decimal place{'s' if decimals > 1 else ''}."
                assert places in p.question, (p.id, p.reference)
    sound = science.items()[5]
    assert sound.reference == "2.058" and "to 3 decimal places" in sound.question
    assert not grade("Answer: 2.06 km", sound.reference, sound.grader).passed
    assert grade("Answer: 2.058 km", sound.reference, sound.grader).passed


def test_mdr_domains_come_from_an_explicit_list_and_importing_registers_nothing(monkeypatch):
    import importlib

    from branchmerge.evaluate.mdr import base

    monkeypatch.setattr(base, "DOMAINS", {})
    monkeypatch.setattr(base, "_loaded", False)
    importlib.import_module("branchmerge.evaluate.mdr.sql")  # a domain module defines DOMAIN, adds nothing
    assert base.DOMAINS == {}
    assert base.domain_names()[:3] == ["logic", "math", "sql"] and len(base.domain_names()) == 10
    mine = base.Domain("mine", list, lambda level, seed: None)  # type: ignore[arg-type, return-value]
    assert base.register(mine) is mine and base.domain_names()[-1] == "mine"
    with pytest.raises(ValueError, match="registered twice"):
        base.register(mine)
