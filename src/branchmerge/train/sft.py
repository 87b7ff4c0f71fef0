"""Supervised fine-tuning through TRL's SFTTrainer: full or LoRA (PEFT), loss on assistant tokens only.

Defaults are sized for reasoning traces (`max_length` 4096, not TRL's 1024) and for CPUs (no bf16, no gradient
checkpointing, which slows tiny models by a third). LoRA adapters are merged into full weights before saving so
that `merge` and `serve` take the result directly.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import torch
from datasets import Dataset
from pydantic import BaseModel, ConfigDict
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback

from branchmerge.records import SFTExample, atomic_dir
from branchmerge.teachers.local import check_model_dir


class SFTSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["full", "lora"] = "full"
    max_steps: int = 100
    batch_size: int = 16
    learning_rate: float = 5e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_length: int = 4096
    seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | str = "all-linear"
    bf16: bool = False
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    steps: int
    first_loss: float
    final_loss: float
    seconds: float
    examples: int
    train_tokens: int


class _RichProgress(TrainerCallback):
    """A rich bar over optimizer steps, with the running loss."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps · loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not enabled,
            transient=True,
        )
        self.label = label
        self.losses: list[float] = []
        self.task: Any = None

    def on_train_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        self.progress.start()
        self.task = self.progress.add_task(self.label, total=state.max_steps, loss="-")

    def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))
            self.progress.update(self.task, loss=f"{logs['loss']:.3f}")

    def on_train_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        self.progress.stop()


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
    progress = _RichProgress(label, show_progress)
    with atomic_dir(out_dir) as tmp:
        config = SFTConfig(
            output_dir=str(tmp / "_trainer"),
            max_steps=s.max_steps,
            per_device_train_batch_size=s.batch_size,
            learning_rate=s.learning_rate,
            lr_scheduler_type=s.lr_scheduler,
            warmup_steps=max(0, round(s.warmup_ratio * s.max_steps)),
            weight_decay=s.weight_decay,
            max_length=s.max_length,
            assistant_only_loss=True,
            bf16=s.bf16,
            use_cpu=not torch.cuda.is_available(),
            activation_checkpointing=s.gradient_checkpointing,
            seed=s.seed,
            data_seed=s.seed,
            logging_steps=max(1, s.max_steps // 20),
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataset_num_proc=None,
        )
        _quiet_transformers()
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[progress],
        )
        trainer.remove_callback(PrinterCallback)  # our bar shows the loss; no raw log dicts on stdout
        trainer.train()
        trained: Any = trainer.model
        if s.method == "lora":
            trained = trained.merge_and_unload()
        trained.save_pretrained(tmp, safe_serialization=True)
        _copy_side_files(base, tmp)
        shutil.rmtree(tmp / "_trainer", ignore_errors=True)
    losses = progress.losses or [float("nan")]
    n_tokens = sum(e.num_tokens for e in examples)
    return TrainResult(
        out_dir=out_dir,
        steps=s.max_steps,
        first_loss=losses[0],
        final_loss=losses[-1],
        seconds=time.perf_counter() - start,
        examples=len(examples),
        train_tokens=n_tokens,
    )


_SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


def _copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer, chat template and generation config exactly as the base had them (training does not change them)."""
    for name in _SIDE_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("transformers", "trl", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
