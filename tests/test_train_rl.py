"""Reward models, preference pairs, DPO and GRPO on the shipped tiny student, a few CPU steps each, and their CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from branchmerge.cli.main import app
from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, Trace, write_jsonl
from branchmerge.tinylab.domains import generate_problems
from branchmerge.tinylab.weights import student_dir
from branchmerge.train.dpo import DPOSettings, build_preference_pairs, train_dpo
from branchmerge.train.grpo import GRPOSettings, train_grpo
from branchmerge.train.reward_model import (
    RewardModelSettings,
    load_scorer,
    reward_text,
    train_reward_model,
)

runner = CliRunner()


def _trace(pid: str, sample: int, **fields) -> Trace:
    return Trace(problem_id=pid, teacher="t", model="m", sample=sample, temperature=0.6, **fields)


def _verbose(rv: int) -> str:
    """Reasoning whose length grows with its RV score: a score the reward model can learn."""
    return " ".join(["1+1=2"] * (1 + 2 * rv))


@pytest.fixture(scope="module")
def scored():
    problems = {
        f"p{i}": Problem(id=f"p{i}", domain="add", question=f"What is {i}+{i}?", reference=str(2 * i))
        for i in range(40)
    }
    traces = [_trace(f"p{i}", 0, reasoning=_verbose(i % 10), answer=str(2 * i), rv=i % 10) for i in range(40)]
    traces += [_trace("p0", 1, reasoning="x", answer="0"), _trace("p1", 1, reasoning="y", answer="2", cd=3)]
    return traces, problems


@pytest.fixture(scope="module")
def rv_model(scored, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "rv"
    settings = RewardModelSettings(max_steps=30, batch_size=8, learning_rate=1e-3, heldout=0.2)
    result = train_reward_model(*scored, student_dir(), out, "rv", settings, show_progress=False)
    return out, result


def test_reward_model_learns_a_length_score_and_saves_its_metrics(rv_model):
    from transformers import AutoModelForSequenceClassification

    out, r = rv_model
    assert (r.train, r.heldout, r.skipped, r.truncated) == (
        32,
        8,
        2,
        0,
    )  # both unscored-for-rv traces skipped
    assert r.final_loss < r.first_loss / 10
    assert r.spearman is not None and r.spearman > 0.8 and r.mae < 1.5
    metrics = json.loads((out / "reward_metrics.json").read_text())
    assert metrics["mae"] == pytest.approx(r.mae) and metrics["spearman"] == pytest.approx(r.spearman)
    assert metrics["target"] == "rv" and metrics["skipped"] == 2
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    assert sorted(p.name for p in out.parent.iterdir()) == ["rv"]  # no temporary folder left behind

    score = load_scorer(out)
    prompt = [{"role": "user", "content": "What is 3+3?"}]
    short, long_, bare = score(
        [prompt] * 3,
        [
            f"<think>\n{_verbose(0)}\n</think>\n\n6",
            [{"role": "assistant", "content": f"<think>{_verbose(9)}</think>6"}],
            "",
        ],
    )
    assert all(0 <= s <= 9 for s in (short, long_, bare)) and long_ > short + 4


def test_reward_text_layout_and_too_few_scores(scored, tmp_path):
    assert reward_text("Q?", "r", "a") == "Q?\n\n<think>\nr\n</think>\n\na"
    traces, problems = scored
    with pytest.raises(BranchmergeError, match="1 traces carry a 'cd' score; need at least 2"):
        train_reward_model(traces, problems, student_dir(), tmp_path / "cd", "cd", show_progress=False)
    assert not (tmp_path / "cd").exists()
    with pytest.raises(BranchmergeError, match="no reward_metrics.json"):
        load_scorer(student_dir())


def _pair_problems(n: int) -> dict[str, Problem]:
    return {f"q{i}": Problem(id=f"q{i}", domain="d", question=f"Q{i}?", reference="1") for i in range(n)}


def _turn(reasoning: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{answer}"}]


def test_verified_pairs_and_the_reasons_for_none():
    problems = _pair_problems(6)
    traces = [
        _trace("q0", 0, reasoning="good", answer="1", verified=True),
        _trace("q0", 1, reasoning="bad", answer="2", verified=False),
        _trace("q1", 0, reasoning="good", answer="1", verified=True),  # nothing failed
        _trace("q2", 0, reasoning="bad", answer="2", verified=False),  # nothing passed
        _trace("q3", 0, reasoning="?", answer="1"),  # never verified
        _trace("q3", 1, error="timeout", verified=False),  # an API failure is no rejected answer
        _trace("q4", 0, reasoning="a", answer="1", verified=True),
        _trace("q4", 1, reasoning="b", answer="1", verified=True),
        _trace("q4", 2, reasoning="c", answer="3", verified=False),
    ]  # q5 has no traces
    pairs, report = build_preference_pairs(traces, problems, seed=0)
    assert pairs[0] == {
        "prompt": [{"role": "user", "content": "Q0?"}],
        "chosen": _turn("good", "1"),
        "rejected": _turn("bad", "2"),
        "problem_id": "q0",
    }
    assert [p["problem_id"] for p in pairs] == ["q0", "q4"]  # q4: each trace in one pair at most
    assert pairs[1]["chosen"] in (_turn("a", "1"), _turn("b", "1")) and pairs[1]["rejected"] == _turn(
        "c", "3"
    )
    assert report.pairs == 2
    assert report.skipped_traces == {"unchecked": 1, "error": 1}
    assert report.problems_without_pair == {"no failed trace": 1, "no verified trace": 2, "no traces": 1}
    assert build_preference_pairs(traces, problems, seed=0)[0] == pairs  # seeded


def test_verbosity_pairs_and_the_reasons_for_none():
    problems = _pair_problems(3)
    traces = [
        _trace("q0", 0, reasoning="mid", answer="1", verified=True, rv=3),
        _trace("q0", 1, reasoning="long", answer="1", verified=True, rv=8),
        _trace("q0", 2, reasoning="wrong", answer="2", verified=False, rv=4),
        _trace("q0", 3, reasoning="unscored", answer="1", verified=True),
        _trace("q1", 0, reasoning="x", answer="1", verified=True, rv=2),
        _trace("q1", 1, reasoning="y", answer="1", verified=True, rv=5),
        _trace("q2", 0, reasoning="z", answer="1", verified=True, rv=9),
    ]
    pairs, report = build_preference_pairs(traces, problems, mode="verbosity", band=(2, 5))
    assert pairs == [
        {
            "prompt": [{"role": "user", "content": "Q0?"}],
            "chosen": _turn("mid", "1"),
            "rejected": _turn("long", "1"),
            "problem_id": "q0",
        }
    ]
    assert report.skipped_traces == {"not verified": 1, "no rv": 1}
    assert report.problems_without_pair == {"no out-of-band trace": 1, "no in-band trace": 1}
    with pytest.raises(BranchmergeError, match="needs an RV band"):
        build_preference_pairs(traces, problems, mode="verbosity")
    with pytest.raises(BranchmergeError, match="problem 'zz' is not among the problems"):
        build_preference_pairs([_trace("zz", 0)], problems)


def _right_and_wrong(n: int) -> tuple[list[Trace], dict[str, Problem]]:
    problems = generate_problems("add", n, seed=0)
    traces = []
    for p in problems:
        traces.append(_trace(p.id, 0, reasoning=p.meta["solution"], answer=p.reference, verified=True))
        wrong = str(int(p.reference) + 1)
        traces.append(_trace(p.id, 1, reasoning="guess", answer=wrong, verified=False))
    return traces, {p.id: p for p in problems}


def test_dpo_prefers_the_verified_traces_and_saves_a_full_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    pairs, report = build_preference_pairs(*_right_and_wrong(8))
    assert report.pairs == 8
    out = tmp_path / "dpo"
    r = train_dpo(
        pairs,
        student_dir(),
        out,
        DPOSettings(max_steps=6, batch_size=4, learning_rate=1e-3),
        show_progress=False,
    )
    assert r.first_loss == pytest.approx(math.log(2), abs=1e-3)  # the policy starts as its reference
    assert r.final_loss < r.first_loss - 0.2 and r.final_margin > r.first_margin
    weights, base = load_file(out / "model.safetensors"), load_file(student_dir() / "model.safetensors")
    assert set(weights) == set(base) and any(not torch.equal(weights[k], base[k]) for k in base)
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == 331
    assert (out / "chat_template.jinja").read_text() == (student_dir() / "chat_template.jinja").read_text()


def test_grpo_logs_every_reward_part_and_saves_a_full_checkpoint(rv_model, tmp_path):
    from transformers import AutoModelForCausalLM

    settings = GRPOSettings(
        max_steps=2, batch_size=4, num_generations=4, max_completion_length=48, learning_rate=1e-4
    )
    out = tmp_path / "grpo"
    problems = generate_problems("add", 4, seed=1)
    r = train_grpo(
        problems,
        student_dir(),
        out,
        settings,
        rv_model=rv_model[0],
        rv_band=(2, 5),
        lambda_rv=0.5,
        show_progress=False,
    )
    assert set(r.parts) == {"format_reward", "accuracy_reward", "rv_reward"}
    fmt, acc, rv = (r.parts[k][0] for k in ("format_reward", "accuracy_reward", "rv_reward"))
    assert 0 <= fmt <= 1 and 0 <= acc <= 1 and rv <= 0
    assert r.first_reward == pytest.approx(fmt + acc + 0.5 * rv, abs=1e-4)
    assert fmt > 0 and 0 <= r.clipped_ratio <= 1 and math.isfinite(r.last_reward)  # real answers were scored
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == 331
    with pytest.raises(ValueError, match="batch_size 6 is not a multiple of num_generations 4"):
        GRPOSettings(batch_size=6, num_generations=4)
    with pytest.raises(BranchmergeError, match="needs a band"):
        train_grpo(problems, student_dir(), tmp_path / "x", settings, rv_model=rv_model[0])


def _cli(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, ["train", *map(str, args)])
    return result.exit_code, result.output


def test_cli_reward_grpo_and_dpo(scored, rv_model, tmp_path):
    traces, problems = scored
    write_jsonl(tmp_path / "scored.jsonl", traces)
    write_jsonl(tmp_path / "problems.jsonl", problems.values())
    base = student_dir()
    code, out = _cli(
        "reward", tmp_path / "scored.jsonl", "--problems", tmp_path / "problems.jsonl",
        "--target", "rv", "--base", base, "--out", tmp_path / "rm", "--max-steps", 4, "--batch-size", 8,
    )  # fmt: skip
    assert code == 0, out
    assert "MAE" in out and "Spearman" in out and (tmp_path / "rm" / "reward_metrics.json").exists()

    write_jsonl(tmp_path / "add.jsonl", generate_problems("add", 2, seed=2))
    code, out = _cli(
        "grpo", tmp_path / "add.jsonl", "--base", base, "--out", tmp_path / "grpo",
        "--rv-model", rv_model[0], "--rv", "2:5", "--lambda-rv", 0.5, "--num-generations", 2,
        "--batch-size", 2, "--max-completion-length", 12, "--max-steps", 1,
    )  # fmt: skip
    assert code == 0, out
    assert "GRPO steps on 2 problems" in out and (tmp_path / "grpo" / "model.safetensors").exists()

    right_wrong, add_problems = _right_and_wrong(4)
    write_jsonl(tmp_path / "traces.jsonl", right_wrong)
    write_jsonl(tmp_path / "add4.jsonl", add_problems.values())
    code, out = _cli(
        "dpo", tmp_path / "traces.jsonl", "--problems", tmp_path / "add4.jsonl", "--base", base,
        "--out", tmp_path / "dpo", "--max-steps", 2, "--batch-size", 2, "--beta", 0.2,
    )  # fmt: skip
    assert code == 0, out
    assert "4 pairs" in out and (tmp_path / "dpo" / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ppo"], "train: No such command 'ppo'"),
        (["grpo", "--target", "rv"], "train grpo: No such option: --target"),
        (["sft", "--beta", "0.1"], "train sft: No such option: --beta"),
        (["reward"], "train reward: Missing option '--problems'"),
        (["reward", "--problems", "{problems}", "--target", "xx"], "--target 'xx': expected one of rv, cd"),
        (["dpo", "--problems", "{problems}", "--pairs", "verbosity"], "--pairs verbosity: needs --rv"),
        (
            ["dpo", "--problems", "{problems}", "--pairs", "verbosity", "--rv", "5:2"],
            "--rv '5:2': expected 0 ≤ LOW ≤ HIGH ≤ 9",
        ),
        (["dpo", "--problems", "{problems}"], "2 problem ids are not in"),
        (
            ["grpo", "--batch-size", "6", "--num-generations", "4"],
            "--batch-size 6 is not a multiple of --num-generations 4",
        ),
        (["grpo", "--rv", "2:5"], "grpo: a RV band without a RV reward model"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    """The data file holds traces, except for grpo (problems); two traces name problems the file lacks."""
    write_jsonl(tmp_path / "problems.jsonl", [Problem(id="p0", domain="add", question="Q?", reference="1")])
    write_jsonl(tmp_path / "traces.jsonl", [_trace("x1", 0), _trace("x2", 0)])
    data = tmp_path / ("problems.jsonl" if "grpo" in args else "traces.jsonl")
    method, *args = [a.replace("{problems}", str(tmp_path / "problems.jsonl")) for a in args]
    code, out = _cli(method, data, "--base", student_dir(), "--out", tmp_path / "o", *args)
    assert code == 2 and out.startswith("error:") and out.strip().count("\n") == 0, out
    assert message in out
    assert not (tmp_path / "o").exists()
