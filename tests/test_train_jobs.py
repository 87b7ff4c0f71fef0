"""The training requests (`train/jobs.py`): the rules between options live in the library, not the CLI."""

import re

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from branchmerge.cli.main import app
from branchmerge.train.jobs import DPOJob, GRPOJob, KDJob, SFTJob
from branchmerge.train.kd import KDSettings


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SFTJob(no_mixture=True), "no_mixture: applies only with experts"),
        (lambda: SFTJob(mixture_budget="same"), "mixture_budget: applies only with experts"),
        (
            lambda: SFTJob(experts="domain", eval_fraction=0.1),
            "eval_fraction: cannot be combined with experts",
        ),
        (lambda: SFTJob(eval_fraction=1.0), "expected a number between 0 and 1"),
        (lambda: KDJob(), "KD needs teacher (online), kd_cache"),
        (lambda: KDJob(teacher="t", settings={"top_k": 8}), "top_k: read only when filling a cache"),
        (lambda: KDSettings(mix_weight=0.3), "mix_weight: read only with kd_loss mix, not forward"),
        (lambda: DPOJob(problems="p", pairs="verbosity"), "pairs verbosity: needs rv"),
        (lambda: GRPOJob(rv="7:3"), "expected 0 ≤ LOW ≤ HIGH ≤ 9"),
        (lambda: GRPOJob(cd="3-7"), "expected LOW:HIGH"),
    ],
)
def test_rules_between_fields_are_validators(build, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        build()


def test_what_the_rules_allow():
    assert SFTJob(experts="teacher", no_mixture=True, mixture_budget="same").settings.method == "full"
    assert SFTJob(eval_fraction=0.25).eval_fraction == 0.25
    assert KDJob(teacher="t", kd_cache="c", settings={"top_k": 8}).settings.top_k == 8
    assert KDSettings(kd_loss="mix", mix_weight=0.3).mix_weight == 0.3
    assert DPOJob(problems="p", pairs="verbosity", rv="2:5").rv == (2.0, 5.0)
    assert GRPOJob(rv=(1.0, 4.0)).rv == (1.0, 4.0)  # a tuple from Python passes as it is


@pytest.mark.parametrize("method", ["sft", "reward", "grpo", "dpo", "kd"])
def test_every_subcommand_has_help_with_an_example(method):
    result = CliRunner().invoke(app, ["train", method, "--help"])
    assert result.exit_code == 0 and f"Example: branchmerge train {method} " in result.output
