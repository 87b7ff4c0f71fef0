"""Supervised fine-tuning through TRL's SFTTrainer: full, LoRA, QLoRA or DoRA, loss on assistant tokens only.

Defaults are sized for reasoning traces (`max_length` 4096, not TRL's 1024) and for CPUs (no bf16, no gradient
checkpointing, which slows tiny models by a third). Adapters are merged into full weights before saving so that
`merge` and `serve` take the result directly (see `sft_methods`).

Packing (`packing: true`) uses TRL's best-fit-decreasing packing with padding-free collation: the examples of a
batch are laid end to end in one row whose `position_ids` restart at 0 for each example, and no attention mask is
passed. Flash-attention turns the restarts into variable-length sequences; SDPA and eager attention (CPU) get a
block-diagonal causal mask that transformers derives from the same `position_ids`. Either way no example attends to
another (tests/test_train_sft_methods.py checks it logit by logit through the trainer's own collator and model),
but on SDPA/eager the mask and the attention are quadratic in the row (batch_size × max_length tokens), so packing
pays off only with flash-attention.

With `resume` (or `save_steps`) a run writes Trainer checkpoints to `OUT.partial-ckpt/`; a rerun of the same run
continues from the last one, and the folder goes once OUT has landed. Held-out `eval_examples` give one loss per
domain at every evaluation (`eval_<domain>_loss`).
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from datasets import Dataset
from pydantic import Field, model_validator
from transformers import AutoTokenizer, TrainerCallback

from branchmerge.errors import BranchmergeError
from branchmerge.records import SFTExample
from branchmerge.teachers.local import check_model_dir
from branchmerge.train.sft_methods import (
    AttnImplementation,
    Method,
    adapter_config,
    check_available,
    full_weights,
    load_base,
)
from branchmerge.train.trl_run import (
    ReportTo,
    RichProgress,
    RunSettings,
    TokenCount,
    checkpoint_args,
    checkpoints_dir,
    gathered_state_dict,
    is_main_process,
    logs_dir,
    quiet_transformers,
    reporting,
    resume_point,
    run_key,
    run_output,
    run_trainer,
    save_full,
    start_checkpoints,
    trainer_args,
)

if TYPE_CHECKING:
    from trl import SFTTrainer

log = logging.getLogger(__name__)


class SFTSettings(RunSettings):
    method: Method = "full"
    max_length: int = Field(4096, gt=0)  # tokens per example; with packing, per packed row
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | str | None = None  # None: the preset for the model's architecture
    packing: bool = False
    attn_implementation: AttnImplementation | None = None  # None: transformers' default (SDPA)
    use_liger_kernel: bool = False  # Liger's Triton kernels (GPU); needs the liger-kernel package
    resume: bool = False  # checkpoint to OUT.partial-ckpt/ and continue from the last checkpoint there
    save_steps: int | None = Field(None, gt=0)  # None: every max_steps/10 with resume, else no checkpoints
    report_to: ReportTo = "auto"  # auto: TensorBoard when installed, else none
    eval_steps: int | None = Field(None, gt=0)  # with eval_examples; None: every max_steps/5

    @model_validator(mode="after")
    def _qlora_computes_in_bf16(self) -> SFTSettings:
        """QLoRA's 4-bit base computes in bf16, so training autocasts to bf16 unless bf16 was set explicitly."""
        if self.method == "qlora" and "bf16" not in self.model_fields_set:
            self.bf16 = True
        return self

    def eval_every(self) -> int:
        return self.eval_steps or max(1, self.max_steps // 5)

    def checkpoint_every(self) -> int | None:
        if self.save_steps is None and self.resume:
            return max(1, self.max_steps // 10)
        return self.save_steps


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    steps: int
    first_loss: float  # the first loss logged by this run (after the checkpoint when it resumed)
    final_loss: float
    seconds: float
    examples: int
    # non-padding input tokens over all steps, and those the loss was taken on (None: resumed from a checkpoint
    # that did not record them)
    train_tokens: int | None
    loss_tokens: int | None = None
    resumed_from_step: int | None = None
    # domain -> held-out loss at the last evaluation
    eval_losses: dict[str, float] = field(default_factory=dict)


def train_sft(
    examples: list[SFTExample],
    base_model: str | Path,
    out_dir: str | Path,
    settings: SFTSettings | None = None,
    *,
    eval_examples: Sequence[SFTExample] = (),
    label: str = "sft",
    show_progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Fine-tune `base_model` on `examples` and save full weights + tokenizer to `out_dir` (atomically)."""
    s = settings or SFTSettings()
    base = check_model_dir(base_model)
    if not examples:
        raise BranchmergeError(f"{label}: no SFT examples to train on (check --domain and the SFT file)")
    check_available(s)
    out_dir = Path(out_dir)
    report_to, report_callbacks = reporting(s.report_to, logs_dir(out_dir))
    ckpt, every = checkpoints_dir(out_dir), s.checkpoint_every()
    key = run_key(
        str(base.resolve()),
        s.model_dump(mode="json", exclude=_NOT_IN_RUN_KEY),
        [e.model_dump(mode="json") for e in examples],
    )
    resume_from = resume_point(ckpt, key, s.resume)
    start = time.perf_counter()
    progress = RichProgress(label, show_progress)
    with run_output(out_dir) as tmp:
        trainer = build_sft_trainer(
            examples,
            base,
            s,
            ckpt if every else tmp / "_trainer",
            eval_examples=eval_examples,
            callbacks=[progress, *report_callbacks, *callbacks],
            report_to=report_to,
            run_name=out_dir.name,
            **(checkpoint_args(every) if every else {}),
        )
        check_sharding(trainer, s.method)
        seen = TokenCount()
        seen.attach(trainer, resume_from)
        if every and is_main_process():
            start_checkpoints(ckpt, key)
        run_trainer(trainer, resume_from)
        steps = trainer.state.global_step
        train_tokens, loss_tokens = seen.totals()
        if eval_examples and steps % s.eval_every():
            trainer.evaluate()  # so the reported held-out losses are the final model's
        state = gathered_state_dict(trainer)  # every rank takes part; None unless the weights are sharded
        if is_main_process():
            model = trainer.accelerator.unwrap_model(trainer.model)
            save_full(full_weights(model, base, s.method, tmp / "_trainer"), base, tmp, state)
    if is_main_process():
        shutil.rmtree(ckpt, ignore_errors=True)
    first_loss, final_loss = progress.first_last("loss")
    domains = sorted({e.domain for e in eval_examples})
    eval_losses = {d: progress.first_last(f"eval_{d}_loss")[1] for d in domains}
    return TrainResult(
        out_dir=out_dir,
        steps=steps,
        first_loss=first_loss,
        final_loss=final_loss,
        seconds=time.perf_counter() - start,
        examples=len(examples),
        train_tokens=train_tokens,
        loss_tokens=loss_tokens,
        resumed_from_step=None if resume_from is None else int(resume_from.name.removeprefix("checkpoint-")),
        eval_losses=eval_losses,
    )


def check_sharding(trainer: Any, method: str) -> None:
    """Adapters are merged into full weights on the main process, which needs the whole model there: LoRA-family
    methods run on one GPU, under DDP or ZeRO-1/2, not with sharded weights (FSDP, ZeRO-3)."""
    ds = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    sharded = trainer.is_fsdp_enabled or (ds is not None and getattr(ds, "zero_stage", 0) == 3)
    if sharded and method != "full":
        raise BranchmergeError(
            f"method {method}: adapters cannot be merged from sharded weights; launch with "
            "configs/deepspeed_zero2.yaml (or plain DDP) for LoRA, QLoRA and DoRA, and keep ZeRO-3/FSDP for full SFT"
        )


def build_sft_trainer(
    examples: Sequence[SFTExample],
    base: Path,
    s: SFTSettings,
    output_dir: Path,
    *,
    eval_examples: Sequence[SFTExample] = (),
    callbacks: Sequence[TrainerCallback] = (),
    **args: Any,
) -> SFTTrainer:
    """The TRL SFTTrainer `train_sft` runs (its datasets tokenized, packed and masked); `args` are more SFTConfig
    fields. Tests take its collator and model to check what training sees."""
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "right"  # training pads on the right; generation uses left
    model = load_base(base, s)
    eval_sets = {
        domain: _dataset([e for e in eval_examples if e.domain == domain])
        for domain in sorted({e.domain for e in eval_examples})
    }
    if s.packing and not model.config._attn_implementation.startswith("flash_attention"):
        (log.warning if torch.cuda.is_available() else log.info)(
            "packing with %s attention: examples stay apart (a block-diagonal mask built from position_ids) but "
            "attention is quadratic in the packed row; flash-attention (attn_implementation: flash_attention_2, "
            "pip install flash-attn) runs it as variable-length sequences",
            model.config._attn_implementation,
        )
    config = SFTConfig(
        **{
            **trainer_args(s, output_dir),
            "max_length": s.max_length,
            "assistant_only_loss": True,
            "dataset_num_proc": None,
            "packing": s.packing,
            "packing_strategy": "bfd",  # padding-free: position_ids restart per example, no cross-attention
            "use_liger_kernel": s.use_liger_kernel,
            **_eval_args(s, bool(eval_sets)),
            **args,
        }
    )
    quiet_transformers()
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=_dataset(examples),
        eval_dataset=eval_sets or None,  # a dict: the Trainer logs eval_<domain>_loss for each
        processing_class=tokenizer,
        peft_config=adapter_config(s, model.config.model_type),
        callbacks=list(callbacks),
    )


def _dataset(examples: Sequence[SFTExample]) -> Dataset:
    return Dataset.from_list([{"messages": e.messages} for e in examples])


def _eval_args(s: SFTSettings, evaluate: bool) -> dict[str, Any]:
    if not evaluate:
        return {"eval_strategy": "no"}
    return {
        "eval_strategy": "steps",
        "eval_steps": s.eval_every(),
        "per_device_eval_batch_size": s.batch_size,
        "prediction_loss_only": True,  # else TRL runs a second forward for logits nobody reads
    }


# Settings that change what a run logs or how often it saves, not the weights it reaches.
_NOT_IN_RUN_KEY = {"resume", "save_steps", "report_to", "eval_steps"}


def split_heldout(
    examples: Sequence[SFTExample], fraction: float, seed: int = 0
) -> tuple[list[SFTExample], list[SFTExample]]:
    """(train, held out): per domain, a seeded `fraction` of the problems (at least one when a domain has two or
    more) with all their traces, so that no held-out question is also trained on through another trace."""
    if not 0 < fraction < 1:
        raise ValueError(f"held-out fraction {fraction}: expected a number between 0 and 1")
    rng = random.Random(seed)
    held: set[str] = set()
    for domain in sorted({e.domain for e in examples}):
        problems = sorted({e.problem_id for e in examples if e.domain == domain})
        if len(problems) >= 2:
            k = min(len(problems) - 1, max(1, round(fraction * len(problems))))  # keep one to train on
            held.update(rng.sample(problems, k))
    return [e for e in examples if e.problem_id not in held], [e for e in examples if e.problem_id in held]
