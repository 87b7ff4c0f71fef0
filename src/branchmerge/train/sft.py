"""Supervised fine-tuning through TRL's SFTTrainer: full or LoRA (PEFT), loss on assistant tokens only.

Defaults are sized for reasoning traces (`max_length` 4096, not TRL's 1024) and for CPUs (no bf16, no gradient
checkpointing, which slows tiny models by a third). LoRA adapters are merged into full weights before saving so
that `merge` and `serve` take the result directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from datasets import Dataset
from pydantic import Field
from transformers import AutoModelForCausalLM, AutoTokenizer

from branchmerge.records import SFTExample, atomic_dir
from branchmerge.teachers.local import check_model_dir
from branchmerge.train.trl_run import (
    RichProgress,
    RunSettings,
    quiet_transformers,
    run_trainer,
    save_full,
    trainer_args,
)


class SFTSettings(RunSettings):
    method: Literal["full", "lora"] = "full"
    max_length: int = Field(4096, gt=0)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | str = "all-linear"


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    steps: int
    first_loss: float
    final_loss: float
    seconds: float
    examples: int
    train_tokens: int


def train_sft(
    examples: list[SFTExample],
    base_model: str | Path,
    out_dir: str | Path,
    settings: SFTSettings | None = None,
    *,
    label: str = "sft",
    show_progress: bool = True,
) -> TrainResult:
    """Fine-tune `base_model` on `examples` and save full weights + tokenizer to `out_dir` (atomically)."""
    from trl import SFTConfig, SFTTrainer

    s = settings or SFTSettings()
    base = check_model_dir(base_model)
    if not examples:
        raise ValueError(f"{label}: no SFT examples to train on")
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "right"  # training pads on the right; generation uses left
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    dataset = Dataset.from_list([{"messages": e.messages} for e in examples])
    peft_config = None
    if s.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=s.lora_r,
            lora_alpha=s.lora_alpha,
            lora_dropout=s.lora_dropout,
            target_modules=s.lora_target_modules,
            task_type="CAUSAL_LM",
        )
    out_dir = Path(out_dir)
    progress = RichProgress(label, show_progress)
    with atomic_dir(out_dir) as tmp:
        config = SFTConfig(
            **trainer_args(s, tmp / "_trainer"),
            max_length=s.max_length,
            assistant_only_loss=True,
            dataset_num_proc=None,
        )
        quiet_transformers()
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[progress],
        )
        run_trainer(trainer)
        trained: Any = trainer.model
        if s.method == "lora":
            trained = trained.merge_and_unload()
        save_full(trained, base, tmp)
    first_loss, final_loss = progress.first_last("loss")
    n_tokens = sum(e.num_tokens for e in examples)
    return TrainResult(
        out_dir=out_dir,
        steps=s.max_steps,
        first_loss=first_loss,
        final_loss=final_loss,
        seconds=time.perf_counter() - start,
        examples=len(examples),
        train_tokens=n_tokens,
    )
