"""What every training run here shares: settings, trainer arguments sized for CPUs, a rich progress bar, quiet
library logs, metric reporting (TensorBoard, W&B), resumable checkpoints beside the output, and saving full weights
with the base's tokenizer files.

SFT, reward models, GRPO and DPO each build their own TRL/transformers trainer from these pieces; none of them
knows about the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sized
from pathlib import Path
from typing import Any, Literal

import datasets
import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import PrinterCallback, Trainer, TrainerCallback

from branchmerge.errors import BranchmergeError
from branchmerge.records import atomic_dir

ReportTo = Literal["auto", "none", "tensorboard", "wandb"]


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


def run_trainer(trainer: Trainer, resume_from: Path | None = None) -> None:
    """Train with our bar as the only output (no raw log dicts on stdout), from a checkpoint when given."""
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))


class TokenCount(TrainerCallback):
    """What a run trains on, counted at every training step from the batch the model receives: `inputs`, the
    input tokens that are not padding (padding-free packed rows hold none), and `loss`, the tokens the loss is
    taken on (labels other than -100 after the causal shift). Evaluation batches are not counted. Every checkpoint
    keeps the counts so far (tokens-seen.json), so a resumed run reports the whole run's; None when it resumed
    from a checkpoint without them. Under a multi-process launch `totals` sums the ranks (a collective call)."""

    FILE = "tokens-seen.json"

    def __init__(self) -> None:
        self.inputs, self.loss, self.known = 0, 0, True

    def attach(self, trainer: Trainer, resume_from: Path | None) -> None:
        if resume_from is not None and is_main_process():
            try:
                saved = json.loads((resume_from / self.FILE).read_text(encoding="utf-8"))
                self.inputs, self.loss = int(saved["inputs"]), int(saved["loss"])
            except (OSError, ValueError, KeyError):
                self.known = False
        step = trainer.training_step

        def counting_step(model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            mask = inputs.get("attention_mask")
            self.inputs += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            labels = inputs.get("labels")
            if labels is not None:
                self.loss += int((labels[..., 1:] != -100).sum())
            return step(model, inputs, *args, **kwargs)

        trainer.training_step = counting_step  # type: ignore[method-assign]
        trainer.add_callback(self)

    def totals(self) -> tuple[int | None, int | None]:
        counts = torch.tensor([self.inputs, self.loss, int(not self.known)], dtype=torch.int64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        if counts[2]:
            return None, None
        return int(counts[0]), int(counts[1])

    def on_save(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        inputs, loss = self.totals()
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if is_main_process() and inputs is not None and folder.is_dir():
            (folder / self.FILE).write_text(json.dumps({"inputs": inputs, "loss": loss}), encoding="utf-8")


def logs_dir(out: Path) -> Path:
    """Metric logs sit beside the outputs, one folder per run: `tensorboard --logdir PARENT/logs` compares them."""
    return out.parent / "logs" / out.name


def reporting(report_to: ReportTo, logs: Path) -> tuple[list[str], list[TrainerCallback]]:
    """`report_to` for the trainer arguments and the callbacks to add. "auto" is TensorBoard when it is installed
    (tensorboardX, a dependency, writes the event files; the viewer is the `branchmerge[tensorboard]` extra), else
    nothing."""
    tensorboard = (
        importlib.util.find_spec("tensorboard") is not None
        or importlib.util.find_spec("tensorboardX") is not None
    )
    if report_to == "auto":
        report_to = "tensorboard" if tensorboard else "none"
    if report_to == "none":
        return [], []
    if report_to == "wandb":
        if importlib.util.find_spec("wandb") is None:
            raise BranchmergeError("report_to wandb: the wandb package is not installed (pip install wandb)")
        return ["wandb"], []  # W&B reads WANDB_PROJECT / WANDB_DIR from the environment, as it documents
    if not tensorboard:
        raise BranchmergeError(
            "report_to tensorboard: the tensorboard package is not installed "
            "(pip install tensorboard, or pip install 'branchmerge[tensorboard]')"
        )
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(logs)  # what its TENSORBOARD_LOGGING_DIR variable sets; env stays untouched
    return [], [callback]


CHECKPOINTS_SUFFIX = ".partial-ckpt"
_RUN_KEY = "run-key.txt"


def checkpoints_dir(out: Path) -> Path:
    """Where a run keeps its Trainer checkpoints: `OUT.partial-ckpt/` beside OUT, removed once OUT has landed."""
    return out.with_name(out.name + CHECKPOINTS_SUFFIX)


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete `checkpoint-N` in `folder`: a crash while one was being written leaves it without the
    trainer state, which the Trainer writes last."""
    steps = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / "trainer_state.json").is_file():
            steps.append((int(step), path))
    return max(steps)[1] if steps else None


def run_key(*parts: Any) -> str:
    """Names a run by what decides its weights (base, settings, data; JSON values): only the same run resumes from
    its checkpoints."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def resume_point(folder: Path, key: str, resume: bool) -> Path | None:
    """The checkpoint this run continues from, or None to start afresh.

    `key` (see `run_key`) names the run: checkpoints of another run are never resumed, and checkpoints are never
    deleted unless they hold nothing to resume.
    """
    last = last_checkpoint(folder)
    if last is None:
        shutil.rmtree(folder, ignore_errors=True)  # a crash before the first checkpoint: nothing to keep
        return None
    if not resume:
        raise BranchmergeError(
            f"{folder}: checkpoints of an interrupted run (last: {last.name}); resume it (--resume, resume: true) "
            "or delete the folder to start afresh"
        )
    key_file = folder / _RUN_KEY
    if not key_file.is_file() or key_file.read_text(encoding="utf-8") != key:
        raise BranchmergeError(
            f"{folder}: these checkpoints come from a run with other data, base model or settings; rerun that "
            "run to resume it, or delete the folder to start afresh"
        )
    return last


def start_checkpoints(folder: Path, key: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / _RUN_KEY).write_text(key, encoding="utf-8")


def checkpoint_args(save_steps: int) -> dict[str, Any]:
    """Trainer arguments that save a full resumable state (weights or adapter, optimizer, scheduler, RNG) to the
    output_dir every `save_steps`; two are kept so that a crash while writing one still leaves one to resume."""
    return {
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_total_limit": 2,
        "save_only_model": False,
    }


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a multi-process launch (torchrun / accelerate set RANK)."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def run_output(out: Path) -> Iterator[Path]:
    """The folder a run writes its result into: on the main process an atomic sibling of `out` (renamed on
    success), on the other ranks of a multi-process launch a private scratch folder that is thrown away. Every
    rank leaves the block only once the main one has put `out` in place, so no rank races another for `out`."""
    if is_main_process():
        with atomic_dir(out) as tmp:
            yield tmp
    else:
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.rank") as scratch:
            yield Path(scratch)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def gathered_state_dict(trainer: Trainer) -> dict[str, Any] | None:
    """Under FSDP or DeepSpeed ZeRO-3 every rank holds a shard: gather the full state dict (a collective call,
    made on every rank). None when each rank already holds the whole model (one process, DDP, ZeRO-1/2)."""
    ds = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if trainer.is_fsdp_enabled or (ds is not None and getattr(ds, "zero_stage", 0) == 3):
        return trainer.accelerator.get_state_dict(trainer.model)
    return None


def save_full(model: Any, base: Path, tmp: Path, state_dict: dict[str, Any] | None = None) -> None:
    """Weights as safetensors (from `state_dict` when gathered from shards) plus the base's tokenizer files; drops
    the trainer's scratch folder. Only the main process of a multi-process launch writes (see `run_output`)."""
    if not is_main_process():
        return
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
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


def begin_run(base_dir: str | Path, items: Sized, label: str, what: str) -> tuple[Path, float]:
    """What every trainer does first: refuse empty input (`{label}: no {what}`), check the base folder, quiet
    the libraries, start the clock. Returns the checked base folder and the start time."""
    from branchmerge.teachers.local import check_model_dir

    if not items:
        raise BranchmergeError(f"{label}: no {what}")
    base = check_model_dir(base_dir)
    quiet_transformers()
    return base, time.perf_counter()


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("transformers", "trl", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
