"""DPO of a student on preference pairs built from traces, through TRL's DPOTrainer (reference = the base).

Pairs come from one problem's traces, in one of two modes:
- "verified": chosen = a trace that passed its grader, rejected = one that failed (`verified` False);
- "verbosity": both verified, chosen = RV inside the band [L, H], rejected = RV outside it — the preference
  form of DistilQwen's RV range reward.
Each trace is used at most once per problem: the two sides are shuffled (seeded) and zipped. Traces that cannot
take part and problems left without a pair are counted per reason, never dropped silently.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from datasets import Dataset
from pydantic import Field
from transformers import AutoModelForCausalLM, AutoTokenizer

from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, Trace
from branchmerge.train.sft_data import assistant_message
from branchmerge.train.trl_run import (
    RichProgress,
    RunSettings,
    begin_run,
    run_output,
    run_trainer,
    save_full,
    trainer_args,
)

PairMode = Literal["verified", "verbosity"]


@dataclass
class PairReport:
    pairs: int = 0
    skipped_traces: Counter[str] = field(default_factory=Counter)  # reason -> traces
    problems_without_pair: Counter[str] = field(default_factory=Counter)  # reason -> problems


def _side(t: Trace, mode: PairMode, band: tuple[float, float] | None) -> str:
    """'chosen', 'rejected', or the reason the trace takes no part."""
    if t.error:
        return "error"
    if mode == "verified":
        return "unchecked" if t.verified is None else ("chosen" if t.verified else "rejected")
    if not t.verified:
        return "not verified"
    if t.rv is None:
        return "no rv"
    assert band is not None
    return "chosen" if band[0] <= t.rv <= band[1] else "rejected"


_NO_SIDE = {
    "verified": {"chosen": "no verified trace", "rejected": "no failed trace"},
    "verbosity": {"chosen": "no in-band trace", "rejected": "no out-of-band trace"},
}


def _by_side(
    traces: list[Trace],
    problems: dict[str, Problem],
    mode: PairMode,
    band: tuple[float, float] | None,
    report: PairReport,
) -> dict[str, dict[str, list[Trace]]]:
    """problem id -> {"chosen": [...], "rejected": [...]} for every problem with a trace; the rest counted."""
    sides: dict[str, dict[str, list[Trace]]] = {}
    for t in traces:
        if t.problem_id not in problems:
            raise BranchmergeError(f"trace {t.key}: problem '{t.problem_id}' is not among the problems")
        side = _side(t, mode, band)
        by_side = sides.setdefault(t.problem_id, {"chosen": [], "rejected": []})
        if side in by_side:
            by_side[side].append(t)
        else:
            report.skipped_traces[side] += 1
    return sides


def build_preference_pairs(
    traces: list[Trace],
    problems: dict[str, Problem],
    mode: PairMode = "verified",
    band: tuple[float, float] | None = None,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], PairReport]:
    """Conversational DPO rows (`prompt`, `chosen`, `rejected`, plus `problem_id`) and the counts behind them.

    Problems are taken in the order of `problems`. One without a pair counts under "no traces" or the first side
    it lacks ("no verified trace", "no failed trace"; "no in-band trace", "no out-of-band trace")."""
    if mode == "verbosity" and band is None:
        raise BranchmergeError("pairs 'verbosity' needs an RV band L:H")
    report = PairReport()
    sides = _by_side(traces, problems, mode, band, report)
    rng = random.Random(seed)
    pairs: list[dict[str, Any]] = []
    for pid, problem in problems.items():
        by_side = sides.get(pid)
        missing = [side for side in ("chosen", "rejected") if by_side is None or not by_side[side]]
        if by_side is None or missing:
            report.problems_without_pair["no traces" if by_side is None else _NO_SIDE[mode][missing[0]]] += 1
            continue
        chosen, rejected = (rng.sample(by_side[side], len(by_side[side])) for side in ("chosen", "rejected"))
        # zip stops at the shorter side: each trace is in one pair at most
        pairs += [_pair(problem, c, r) for c, r in zip(chosen, rejected, strict=False)]
    report.pairs = len(pairs)
    return pairs, report


def _pair(problem: Problem, chosen: Trace, rejected: Trace) -> dict[str, Any]:
    return {
        "prompt": [{"role": "user", "content": problem.question}],
        "chosen": [assistant_message(chosen.reasoning, chosen.answer, "think")],
        "rejected": [assistant_message(rejected.reasoning, rejected.answer, "think")],
        "problem_id": problem.id,
    }


class DPOSettings(RunSettings):
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(8, gt=0)
    beta: float = Field(0.1, gt=0)  # the DPO temperature: higher keeps the student nearer the base
    max_length: int = Field(4096, gt=0)  # TRL's 1024 cuts reasoning traces


@dataclass(frozen=True)
class DPOResult:
    out_dir: Path
    steps: int
    pairs: int
    first_loss: float
    final_loss: float
    first_accuracy: float  # rewards/accuracies: share of pairs where chosen out-scores rejected
    final_accuracy: float
    first_margin: float  # rewards/margins: mean β·(log-ratio chosen − log-ratio rejected)
    final_margin: float
    seconds: float


def train_dpo(
    pairs: list[dict[str, Any]],
    base_dir: str | Path,
    out_dir: str | Path,
    settings: DPOSettings | None = None,
    *,
    label: str = "dpo",
    show_progress: bool = True,
) -> DPOResult:
    """DPO from `base_dir` (also the frozen reference); full weights + tokenizer saved to `out_dir` atomically."""
    from trl import DPOConfig, DPOTrainer

    s = settings or DPOSettings()
    base, start = begin_run(base_dir, pairs, label, "preference pairs to train on")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    out_dir = Path(out_dir)
    progress = RichProgress(label, show_progress)
    with run_output(out_dir) as tmp:
        config = DPOConfig(**trainer_args(s, tmp / "_trainer"), beta=s.beta, max_length=s.max_length)
        trainer = DPOTrainer(
            model=model,
            ref_model=reference,
            args=config,
            train_dataset=dataset,
            processing_class=AutoTokenizer.from_pretrained(base),
            callbacks=[progress],
        )
        run_trainer(trainer)
        save_full(trainer.model, base, tmp)
    loss, accuracy, margin = (
        progress.first_last(k) for k in ("loss", "rewards/accuracies", "rewards/margins")
    )
    return DPOResult(
        out_dir=out_dir,
        steps=s.max_steps,
        pairs=len(pairs),
        first_loss=loss[0],
        final_loss=loss[1],
        first_accuracy=accuracy[0],
        final_accuracy=accuracy[1],
        first_margin=margin[0],
        final_margin=margin[1],
        seconds=time.perf_counter() - start,
    )
