"""`branchmerge train sft` with --curriculum and --experts, and `branchmerge train kd`, on the shipped tiny student and teacher."""

import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from branchmerge.cli.main import app
from branchmerge.records import write_jsonl
from branchmerge.tinylab.weights import student_dir, teacher_dir
from sft_fixtures import solved_examples

runner = CliRunner()
FAST = ["--batch-size", "4", "--max-length", "256", "--lr", "3e-3"]
NUMBER = r"(-?\d+\.\d+)"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 SFT examples: 4 'add' marked medium, 4 'sort' marked hard."""
    tok = AutoTokenizer.from_pretrained(student_dir())
    examples = []
    for domain, difficulty in (("add", "medium"), ("sort", "hard")):
        examples += solved_examples(tok, domain, 4, difficulty=difficulty)
    path = tmp_path_factory.mktemp("data") / "sft.jsonl"
    write_jsonl(path, examples)
    return path


def _train(data, out, method, *args):
    result = runner.invoke(
        app, ["train", method, str(data), "--base", str(student_dir()), "--out", str(out), *args]
    )
    assert result.exit_code == 0, result.output
    return result.output


def _weights(folder):
    """The checkpoint's tensors, after checking that transformers loads it as a model."""
    AutoModelForCausalLM.from_pretrained(folder)
    return load_file(folder / "model.safetensors")


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_curriculum_runs_the_stages_in_order_and_keeps_each(data, tmp_path):
    curriculum = tmp_path / "curriculum.yaml"
    curriculum.write_text(
        "stages:\n"
        "  - {name: medium, where: {difficulty: medium}, max_steps: 2}\n"
        "  - {name: hard, where: {difficulty: hard}, max_steps: 3, learning_rate: 0.001}\n"
    )
    out = tmp_path / "student"
    output = _train(data, out, "sft", "--curriculum", str(curriculum), "--report-to", "none", *FAST)

    lines = output.strip().splitlines()[-3:]
    assert re.fullmatch(
        rf"stage 1/2 medium \(difficulty=medium\): 4 examples, 2 steps, loss {NUMBER} → {NUMBER}", lines[0]
    )
    assert re.fullmatch(
        rf"stage 2/2 hard \(difficulty=hard\): 4 examples, 3 steps, loss {NUMBER} → {NUMBER}", lines[1]
    )
    assert lines[2] == f"5 steps in 2 stages → {out} (each stage kept in {tmp_path / 'student.stages'}/)"
    stage_1, stage_2 = (_weights(tmp_path / "student.stages" / d) for d in ("01-medium", "02-hard"))
    final, base = _weights(out), load_file(student_dir() / "model.safetensors")
    assert _same(final, stage_2) and not _same(stage_2, stage_1) and not _same(stage_1, base)
    summary = json.loads((out / "curriculum.json").read_text())
    assert [(s["name"], s["steps"]) for s in summary["stages"]] == [("medium", 2), ("hard", 3)]


def test_experts_by_domain_and_the_mixture_with_the_summed_budget(data, tmp_path):
    out = tmp_path / "branches"
    output = _train(data, out, "sft", "--experts", "domain", "--max-steps", "2", "--report-to", "none", *FAST)

    lines = output.strip().splitlines()[-3:]
    expected = [
        ("expert-add", r"domain=add", 4, 2),
        ("expert-sort", r"domain=sort", 4, 2),
        ("mixture", r"all examples", 8, 4),  # sum: the experts' steps together
    ]
    for line, (name, where, n, steps) in zip(lines, expected, strict=True):
        path = re.escape(str(out / name))
        pattern = rf"{name} \({where}\): {n} examples, {steps} steps, loss {NUMBER} → {NUMBER} → {path}"
        assert re.fullmatch(pattern, line), line
    assert sorted(p.name for p in out.iterdir()) == ["expert-add", "expert-sort", "mixture"]
    add, sort, mixture = (_weights(out / name) for name, *_ in expected)
    assert not _same(add, sort) and not _same(add, mixture) and not _same(sort, mixture)


def test_kd_fills_the_cache_then_trains_from_it_and_shows_ce_and_kd(data, tmp_path):
    cache, out = tmp_path / "kd-cache", tmp_path / "kd"
    args = ["kd", "--kd-cache", str(cache), "--max-steps", "2", *FAST]
    output = _train(data, out, *args, "--teacher", str(teacher_dir()), "--top-k", "8", "--kd-loss", "mix")

    fill, trained = output.strip().splitlines()[-2:]
    filled = re.fullmatch(
        rf"cache {re.escape(str(cache))}: 8 examples cached \(0 already there\), (\d+) tokens at top-8: "
        r"48 bytes/token, \d+\.\d MiB on disk",  # k int32 ids + k fp16 log-probs per token
        fill,
    )
    assert filled, fill
    tokens = int(filled.group(1))
    index = json.loads((cache / "index.json").read_text())
    assert index["k"] == 8 and len(index["examples"]) == 8
    assert sum(rows for _, _, rows in index["examples"].values()) == tokens
    assert all((cache / shard).is_file() for shard in index["shards"])

    m = re.fullmatch(
        rf"2 KD steps \(cache, mix KL, τ 1\) on 8 examples, loss {NUMBER} → {NUMBER} = 0\.5·CE \+ 0\.5·KD: "
        rf"CE {NUMBER} → {NUMBER}, KD {NUMBER} → {NUMBER} → {re.escape(str(out))}",
        trained,
    )
    assert m, trained
    loss, _, ce, _, kd, _ = map(float, m.groups())
    assert ce > 0 and kd > 0 and math.isclose(loss, 0.5 * ce + 0.5 * kd, rel_tol=1e-2)
    assert not _same(_weights(out), load_file(student_dir() / "model.safetensors"))

    # the cache alone now holds every example: no teacher, nothing filled
    again = _train(data, tmp_path / "kd2", *args).strip().splitlines()
    assert len(again) == 1 and again[0].startswith("2 KD steps (cache, forward KL"), again


@pytest.mark.parametrize(
    "args, message",
    [
        (["sft", "--no-mixture"], "--no-mixture: applies only with --experts"),
        (["sft", "--mixture-budget", "same"], "--mixture-budget: applies only with --experts"),
        (["kd"], "KD needs --teacher (online), --kd-cache (an already filled cache), or both"),
        (
            ["dpo", "--problems", "p", "--curriculum", "{curriculum}"],
            "train dpo: No such option: --curriculum",
        ),
        (["sft", "--curriculum", "{bad_curriculum}"], "{bad_curriculum}: stages[1].epoch: unknown key"),
        (["sft", "--experts", "subject"], "--experts 'subject': expected one of domain, teacher"),
        (
            ["sft", "--experts", "domain", "--eval-fraction", "0.2"],
            "--eval-fraction: cannot be combined with --experts",
        ),
        (
            ["sft", "--curriculum", "{curriculum}", "--eval-fraction", "0.2"],
            "--eval-fraction: cannot be combined with --curriculum",
        ),
        (
            ["kd", "--kd-cache", "c", "--kd-loss", "reverse", "--mix-weight", "0.3"],
            "--mix-weight: read only with --kd-loss mix, not reverse",
        ),
        (["kd", "--teacher", "t", "--top-k", "8"], "--top-k: read only when filling a cache"),
        (
            ["kd", "--kd-cache", "c", "--kd-loss", "both"],
            "--kd-loss 'both': expected one of forward, reverse, mix",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(data, tmp_path, args, message):
    files = {"curriculum": tmp_path / "ok.yaml", "bad_curriculum": tmp_path / "bad.yaml"}
    files["curriculum"].write_text("- {name: all}\n")
    files["bad_curriculum"].write_text("stages:\n  - {name: a}\n  - {name: b, epoch: 2}\n")
    method, *args = [a.format(**files) for a in args]
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["train", method, str(data), "--base", str(student_dir()), "--out", str(out), *args]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message.format(**files) in lines[0], lines
    assert not out.exists()
