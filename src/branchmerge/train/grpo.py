"""GRPO of a student on problems through TRL's GRPOTrainer, with DistilQwen's reward (README, "Shipped recipes")

    R = R_fmt + R_acc + λ_RV·R_RV + λ_CD·R_CD,   R_x = −|f_x − clip(f_x, L_x, H_x)|

where f_RV and f_CD come from reward models trained by `reward_model.train_reward_model` (see `rewards.py` for
each term). Prompts are one user turn holding the problem's question; accuracy grades the answer after
`</think>` with the problem's own grader and reference. `max_completion_length` defaults to 4096 because TRL's 512
cuts reasoning mid-thought, and the share of completions that hit it is returned.

Generation (`engine`): "builtin" samples with transformers inside the trainer (works on a CPU); "vllm" uses TRL's
own vLLM generation (`GRPOConfig(use_vllm=True, vllm_mode="colocate")`: vLLM runs in the training process on the
same GPU, holding `vllm_gpu_memory_utilization` of its memory, and gets the new weights each step); "auto" picks
vllm when vLLM is importable and a CUDA GPU is present. TRL 1.16 supports vLLM 0.22 to 0.31.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from datasets import Dataset, Features, Json, List, Value
from pydantic import Field, model_validator
from transformers import AutoModelForCausalLM, AutoTokenizer

from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem
from branchmerge.teachers.engines import Engine, resolve_engine
from branchmerge.train.reward_model import load_scorer
from branchmerge.train.rewards import Scorer, grpo_rewards
from branchmerge.train.trl_run import (
    RichProgress,
    RunSettings,
    begin_run,
    run_output,
    run_trainer,
    save_full,
    trainer_args,
)

Band = tuple[float, float]


class GRPOSettings(RunSettings):
    learning_rate: float = Field(1e-5, gt=0)
    batch_size: int = Field(8, gt=0)  # completions per step: batch_size / num_generations prompts
    num_generations: int = Field(8, ge=2)  # the group each advantage is normalised over
    max_completion_length: int = Field(4096, gt=0)
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.0, ge=0)  # KL weight to the base; 0 (TRL's default) loads no reference model
    engine: Engine = (
        "auto"  # completions sampled by transformers (builtin) or by vLLM (see the module's docstring)
    )
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, lt=1)  # vLLM's share of the GPU (TRL's default)

    @model_validator(mode="after")
    def _whole_groups(self) -> GRPOSettings:
        if self.batch_size % self.num_generations:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of num_generations {self.num_generations}"
            )
        return self


@dataclass(frozen=True)
class GRPOResult:
    out_dir: Path
    steps: int
    problems: int
    first_reward: float  # mean total reward at the first and the last logged step
    last_reward: float
    parts: dict[str, tuple[float, float]]  # each reward function's mean, first and last logged step
    clipped_ratio: float  # share of the last step's completions cut at max_completion_length
    seconds: float


_FEATURES = Features(
    {
        "prompt": List({"role": Value("string"), "content": Value("string")}),
        "reference": Value("string"),
        "grader": Json(),  # grader specs differ in keys (tests, schema, …): kept as JSON, not a merged struct
    }
)


def grpo_dataset(problems: list[Problem]) -> Dataset:
    """One row per problem: a conversational prompt and the columns `accuracy_reward` reads."""
    rows = [
        {"prompt": [{"role": "user", "content": p.question}], "reference": p.reference, "grader": p.grader}
        for p in problems
    ]
    return Dataset.from_list(rows, features=_FEATURES)


def generation_args(s: GRPOSettings, engine: Literal["builtin", "vllm"]) -> dict[str, Any]:
    """The GRPOConfig fields that make `engine` (`s.engine` resolved) sample the completions."""
    if engine == "builtin":
        return {"use_vllm": False}
    return {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": s.vllm_gpu_memory_utilization,
    }


def _scorer(name: str, model_dir: str | Path | None, band: Band | None) -> tuple[Scorer, float, float] | None:
    if model_dir is None:
        if band is not None:
            raise BranchmergeError(f"grpo: a {name} band without a {name} reward model")
        return None
    if band is None:
        raise BranchmergeError(f"grpo: the {name} reward model needs a band L:H")
    return load_scorer(model_dir), band[0], band[1]


def train_grpo(
    problems: list[Problem],
    base_dir: str | Path,
    out_dir: str | Path,
    settings: GRPOSettings | None = None,
    *,
    rv_model: str | Path | None = None,
    rv_band: Band | None = None,
    cd_model: str | Path | None = None,
    cd_band: Band | None = None,
    lambda_rv: float = 1.0,
    lambda_cd: float = 1.0,
    label: str = "grpo",
    show_progress: bool = True,
) -> GRPOResult:
    """GRPO from `base_dir` on `problems`; full weights + tokenizer saved to `out_dir` atomically."""
    from trl import GRPOConfig, GRPOTrainer

    s = settings or GRPOSettings()
    # Before any loading: engine vllm without vLLM or a CUDA GPU is one error naming the field.
    generation = generation_args(s, resolve_engine(s.engine, "grpo: engine"))
    base, start = begin_run(base_dir, problems, label, "problems to train on")
    funcs, weights = grpo_rewards(
        rv=_scorer("RV", rv_model, rv_band),
        cd=_scorer("CD", cd_model, cd_band),
        lambda_rv=lambda_rv,
        lambda_cd=lambda_cd,
    )
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    out_dir = Path(out_dir)
    progress = RichProgress(label, show_progress, metric="reward")
    with run_output(out_dir) as tmp:
        config = GRPOConfig(
            **trainer_args(s, tmp / "_trainer"),
            num_generations=s.num_generations,
            max_completion_length=s.max_completion_length,
            temperature=s.temperature,
            beta=s.beta,
            reward_weights=weights,
            **generation,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=cast(list[Any], funcs),
            args=config,
            train_dataset=grpo_dataset(problems),
            processing_class=AutoTokenizer.from_pretrained(base),
            callbacks=[progress],
        )
        run_trainer(trainer)
        save_full(trainer.model, base, tmp)
    first, last = progress.first_last("reward")
    return GRPOResult(
        out_dir=out_dir,
        steps=s.max_steps,
        problems=len(problems),
        first_reward=first,
        last_reward=last,
        parts={f.__name__: progress.first_last(f"rewards/{f.__name__}/mean") for f in funcs},
        clipped_ratio=progress.first_last("completions/clipped_ratio")[1],
        seconds=time.perf_counter() - start,
    )
