"""The per-workload thread policy: defaults, overrides, restoring torch's setting, and child environments."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from branchmerge import runtime
from branchmerge.errors import BranchmergeError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    monkeypatch.delenv(runtime.WAIT_ENV, raising=False)
    monkeypatch.setattr(runtime, "_set_after_torch", False)


def test_defaults_per_workload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cores", lambda: 8)
    assert runtime.policy("merge", sleeping=True).intra_op == 8
    assert runtime.policy("merge", sleeping=False).intra_op == 7  # one core left to the reader and writer
    assert runtime.policy("merge").overlap_io
    assert runtime.policy("train", params=800_000, sleeping=True).intra_op == 8  # every core pays
    assert runtime.policy("train", sleeping=False).intra_op == 1  # spinning threads collapse under load
    assert runtime.policy("serve").intra_op == 1  # unknown size counts as small
    assert runtime.policy("eval", params=800_000).intra_op == 1
    assert runtime.policy("serve", params=runtime.SMALL_MODEL).intra_op == 8
    grade = runtime.policy("grade")
    assert (grade.intra_op, grade.processes) == (1, 8)
    monkeypatch.setattr(runtime, "cores", lambda: 1)
    assert runtime.policy("merge", sleeping=False).intra_op == 1  # never 0


def test_argument_beats_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.THREADS_ENV, "3")
    assert runtime.policy("train").intra_op == 3
    assert runtime.policy("grade").processes == 3
    assert runtime.policy("train", 2).intra_op == 2


@pytest.mark.parametrize("raw", ["0", "two", "-1"])
def test_bad_environment_is_named(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(runtime.THREADS_ENV, raw)
    with pytest.raises(BranchmergeError, match=runtime.THREADS_ENV):
        runtime.policy("merge")


def test_bad_wait_policy_and_workload(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BranchmergeError, match="not a workload"):
        runtime.policy("compile")  # type: ignore[arg-type]
    monkeypatch.setenv(runtime.WAIT_ENV, "spin")
    with pytest.raises(BranchmergeError, match=runtime.WAIT_ENV):
        runtime.omp_environment()


def test_waits_set_after_torch_loaded_do_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert runtime.sleeping_waits()  # conftest set it before torch loaded
    monkeypatch.delenv("OMP_WAIT_POLICY")
    runtime.prepare_environment()  # torch is loaded in this process: too late for libgomp
    assert not runtime.sleeping_waits()
    assert runtime.policy("train").intra_op == 1


def test_using_sets_then_restores_torch_threads() -> None:
    before = torch.get_num_threads()
    target = 2 if before == 1 else 1
    with runtime.using("train", target) as chosen:
        assert chosen.intra_op == target
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before


def test_child_process_gets_wait_policy_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    env = runtime.subprocess_env("train", 1)
    code = "import os, torch; print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "1"]  # torch reads OMP_NUM_THREADS (capped at the cores)
    monkeypatch.setenv(runtime.WAIT_ENV, "active")
    assert runtime.subprocess_env("merge", 1)["OMP_WAIT_POLICY"] == "ACTIVE"


def test_prepare_environment_keeps_what_the_user_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("KMP_BLOCKTIME", "0")  # restored afterwards
    runtime.prepare_environment()
    assert runtime.os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    runtime.prepare_environment()
    assert runtime.os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
