"""What every training run here shares: settings, trainer arguments sized for CPUs, a rich progress bar, quiet
library logs, and saving full weights with the base's tokenizer files.

SFT, reward models, GRPO and DPO each build their own TRL/transformers trainer from these pieces; none of them
knows about the others.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import datasets
import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import PrinterCallback, Trainer, TrainerCallback


class RunSettings(BaseModel):
    """Optimiser, schedule, seed and precision. Defaults suit the tinylab models on a CPU; models with billions of
    parameters want learning rates 10–100x lower."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(100, gt=0)
    batch_size: int = Field(16, gt=0)
    learning_rate: float = Field(5e-4, gt=0)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    weight_decay: float = 0.0
    seed: int = 0
    bf16: bool = False  # TRL configs default to True, which fails on CPU
    gradient_checkpointing: bool = False  # TRL default True: a third slower on tiny models


def trainer_args(s: RunSettings, output_dir: Path) -> dict[str, Any]:
    """Keyword arguments for any `TrainingArguments` subclass (SFTConfig, GRPOConfig, DPOConfig, …)."""
    return {
        "output_dir": str(output_dir),
        "max_steps": s.max_steps,
        "per_device_train_batch_size": s.batch_size,
        "learning_rate": s.learning_rate,
        "lr_scheduler_type": s.lr_scheduler,
        "warmup_steps": max(0, round(s.warmup_ratio * s.max_steps)),
        "weight_decay": s.weight_decay,
        "bf16": s.bf16,
        "use_cpu": not torch.cuda.is_available(),
        "activation_checkpointing": s.gradient_checkpointing,
        "seed": s.seed,
        "data_seed": s.seed,
        "logging_steps": max(1, s.max_steps // 20),
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
    }


class RichProgress(TrainerCallback):
    """A rich bar over optimizer steps showing one logged metric (loss, reward); keeps every log for the result."""

    def __init__(self, label: str, enabled: bool, metric: str = "loss") -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn(f"{{task.completed}}/{{task.total}} steps · {metric} {{task.fields[value]}}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not enabled,
            transient=True,
        )
        self.label = label
        self.metric = metric
        self.logs: list[dict[str, float]] = []
        self.task: Any = None

    def series(self, key: str) -> list[float]:
        """Every logged value of `key`, in step order."""
        return [log[key] for log in self.logs if key in log]

    def first_last(self, key: str) -> tuple[float, float]:
        """The first and last logged value of `key` (NaN when it was never logged)."""
        values = self.series(key) or [float("nan")]
        return values[0], values[-1]

    def on_train_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        self.progress.start()
        self.task = self.progress.add_task(self.label, total=state.max_steps, value="-")

    def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
        if not logs or "train_runtime" in logs:  # the closing summary is not a step
            return
        self.logs.append({k: float(v) for k, v in logs.items() if isinstance(v, int | float)})
        if self.metric in logs:
            self.progress.update(self.task, value=f"{logs[self.metric]:.3f}")

    def on_train_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        self.progress.stop()


def run_trainer(trainer: Trainer) -> None:
    """Train with our bar as the only output (no raw log dicts on stdout)."""
    trainer.remove_callback(PrinterCallback)
    trainer.train()


def save_full(model: Any, base: Path, tmp: Path) -> None:
    """Weights as safetensors plus the base's tokenizer files; drops the trainer's scratch folder."""
    model.save_pretrained(tmp, safe_serialization=True)
    copy_side_files(base, tmp)
    shutil.rmtree(tmp / "_trainer", ignore_errors=True)


_SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


def copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer, chat template and generation config exactly as the base had them (training does not change them)."""
    for name in _SIDE_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("transformers", "trl", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
