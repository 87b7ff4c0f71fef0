"""`branchmerge train`: SFT (full, LoRA, QLoRA or DoRA; optionally as a curriculum or as branch experts), RV/CD
reward models, GRPO, DPO and logit KD of a student.

One command, one `--method`; each method's options sit in their own help panel, and an option given to a method
that does not read it is an error rather than silently ignored (the tables and runners are in `train_options`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from branchmerge.cli.main import command, console
from branchmerge.cli.train_options import (
    DPO,
    GRPO,
    KD,
    REWARD,
    RUNNERS,
    SFT_PANEL,
    STAGES_PANEL,
    Options,
    check,
)


@command("train")
def train(
    data: Annotated[
        Path,
        typer.Argument(
            help="SFT examples (full, lora, qlora, dora, kd), scored traces (reward), problems (grpo) or traces (dpo)."
        ),
    ],
    base: Annotated[Path, typer.Option("--base", help="Base checkpoint to train.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Output checkpoint folder; with --experts, a folder of expert-*/ and mixture/."
        ),
    ],
    method: Annotated[
        str, typer.Option("--method", help="full | lora | qlora | dora | reward | grpo | dpo | kd.")
    ] = "full",
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Default 100.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Default 16 (SFT), 8 otherwise.")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Default per method (see the library).")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    domain: Annotated[list[str] | None, typer.Option("--domain", help="Train only on these domains.")] = None,
    max_length: Annotated[
        int | None,
        typer.Option("--max-length", help="Tokens per example: SFT, reward, dpo, kd (default 4096)."),
    ] = None,
    packing: Annotated[
        bool,
        typer.Option(
            "--packing",
            help="Pack examples into max-length rows; they never attend to each other.",
            rich_help_panel=SFT_PANEL,
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Checkpoint to OUT.partial-ckpt/ and continue from the last checkpoint there.",
            rich_help_panel=SFT_PANEL,
        ),
    ] = False,
    report_to: Annotated[
        str | None,
        typer.Option(
            "--report-to",
            help="auto (TensorBoard when installed) | tensorboard | wandb | none; TensorBoard logs go to logs/ beside OUT.",
            rich_help_panel=SFT_PANEL,
        ),
    ] = None,
    eval_fraction: Annotated[
        float | None,
        typer.Option(
            "--eval-fraction",
            help="Hold out this fraction of each domain's problems (seeded) for a per-domain eval loss.",
            rich_help_panel=SFT_PANEL,
        ),
    ] = None,
    curriculum: Annotated[
        Path | None,
        typer.Option(
            "--curriculum",
            help="YAML list of stages (name, where, epochs | max_steps, learning_rate, settings), trained in "
            "order, each from the last; stages are kept in OUT.stages/ and a rerun reuses the unchanged ones.",
            rich_help_panel=STAGES_PANEL,
        ),
    ] = None,
    experts: Annotated[
        str | None,
        typer.Option(
            "--experts",
            help="domain | teacher: one expert per domain or teacher from --base, OUT/expert-<name>/, plus "
            "the data-mixture baseline OUT/mixture/; with --curriculum every branch runs the stages.",
            rich_help_panel=STAGES_PANEL,
        ),
    ] = None,
    no_mixture: Annotated[
        bool,
        typer.Option("--no-mixture", help="Train the experts only.", rich_help_panel=STAGES_PANEL),
    ] = False,
    mixture_budget: Annotated[
        str | None,
        typer.Option(
            "--mixture-budget",
            help="sum (default: the mixture gets all experts' steps together) | same (one expert's steps).",
            rich_help_panel=STAGES_PANEL,
        ),
    ] = None,
    problems: Annotated[
        Path | None,
        typer.Option(
            "--problems", help="Problems JSONL the traces answer.", rich_help_panel=f"{REWARD}, {DPO}"
        ),
    ] = None,
    target: Annotated[str | None, typer.Option("--target", help="rv or cd.", rich_help_panel=REWARD)] = None,
    rv_model: Annotated[
        Path | None, typer.Option("--rv-model", help="RV reward model.", rich_help_panel=GRPO)
    ] = None,
    rv: Annotated[
        str | None,
        typer.Option("--rv", help="RV band L:H (grpo reward, dpo verbosity).", rich_help_panel=GRPO),
    ] = None,
    cd_model: Annotated[
        Path | None, typer.Option("--cd-model", help="CD reward model.", rich_help_panel=GRPO)
    ] = None,
    cd: Annotated[str | None, typer.Option("--cd", help="CD band L:H.", rich_help_panel=GRPO)] = None,
    lambda_rv: Annotated[
        float | None, typer.Option("--lambda-rv", help="Default 1.", rich_help_panel=GRPO)
    ] = None,
    lambda_cd: Annotated[
        float | None, typer.Option("--lambda-cd", help="Default 1.", rich_help_panel=GRPO)
    ] = None,
    num_generations: Annotated[
        int | None, typer.Option("--num-generations", help="Group size (default 8).", rich_help_panel=GRPO)
    ] = None,
    max_completion_length: Annotated[
        int | None,
        typer.Option(
            "--max-completion-length", help="Generated tokens (default 4096).", rich_help_panel=GRPO
        ),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            "--engine",
            help="Samples by: auto (vLLM with a CUDA GPU, else builtin), builtin (transformers) or vllm.",
            rich_help_panel=GRPO,
        ),
    ] = None,
    pairs: Annotated[
        str | None, typer.Option("--pairs", help="verified (default) or verbosity.", rich_help_panel=DPO)
    ] = None,
    beta: Annotated[
        float | None, typer.Option("--beta", help="DPO β (0.1) / GRPO KL weight (0).", rich_help_panel=DPO)
    ] = None,
    teacher: Annotated[
        Path | None,
        typer.Option(
            "--teacher", help="Teacher checkpoint sharing the student's tokenizer.", rich_help_panel=KD
        ),
    ] = None,
    kd_cache: Annotated[
        Path | None,
        typer.Option(
            "--kd-cache",
            help="Cache of the teacher's top-k log-probs: filled first when --teacher is given too, then trained "
            "from; alone, it must already hold every example.",
            rich_help_panel=KD,
        ),
    ] = None,
    kd_loss: Annotated[
        str | None,
        typer.Option(
            "--kd-loss",
            help="forward KL(teacher‖student) (default) | reverse KL(student‖teacher) | mix.",
            rich_help_panel=KD,
        ),
    ] = None,
    mix_weight: Annotated[
        float | None,
        typer.Option(
            "--mix-weight", help="With --kd-loss mix: α·forward + (1 − α)·reverse (0.5).", rich_help_panel=KD
        ),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", help="Softmax τ of both models (1).", rich_help_panel=KD)
    ] = None,
    kd_weight: Annotated[
        float | None,
        typer.Option("--kd-weight", help="Loss = ce-weight·CE + kd-weight·KD (0.5).", rich_help_panel=KD),
    ] = None,
    ce_weight: Annotated[
        float | None,
        typer.Option(
            "--ce-weight",
            help="Weight of cross-entropy on the examples' own tokens (0.5).",
            rich_help_panel=KD,
        ),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            "--top-k",
            help="Teacher log-probs kept per token when filling the cache (20).",
            rich_help_panel=KD,
        ),
    ] = None,
) -> None:
    """Train a student: SFT (TRL SFTTrainer, loss on assistant tokens only; QLoRA needs a CUDA GPU and
    bitsandbytes) in one pass, as a curriculum of stages or as branch experts; an RV/CD reward model (a regressor
    with held-out MAE and Spearman); GRPO (format + accuracy + λ·RV/CD range rewards); DPO; or logit KD from a
    teacher (online or through a top-k cache). Saves full weights.

    Example: branchmerge train sft.jsonl --base ./student --out ./expert-add --domain add --max-steps 100

    Example: branchmerge train sft.jsonl --method dora --packing --eval-fraction 0.1 --resume --base ./student --out ./expert

    Example: branchmerge train sft.jsonl --curriculum curriculum.yaml --base ./student --out ./student-cur

    Example: branchmerge train sft.jsonl --experts domain --mixture-budget same --max-steps 50 --base ./student --out ./branches

    Example: branchmerge train sft.jsonl --method kd --teacher ./teacher --kd-cache ./kd-cache --kd-loss mix --mix-weight 0.3 --base ./student --out ./student-kd

    Example: branchmerge train scored.jsonl --method reward --problems problems.jsonl --target rv --out ./rv-model --base ./student

    Example: branchmerge train problems.jsonl --method grpo --base ./expert --out ./grpo --rv-model ./rv-model --rv 2:5 --lambda-rv 0.5

    Example: branchmerge train traces.jsonl --method dpo --problems problems.jsonl --pairs verbosity --rv 2:5 --base ./expert --out ./dpo
    """
    given: Options = {
        "--max-steps": max_steps,
        "--batch-size": batch_size,
        "--lr": lr,
        "--seed": seed,
        "--domain": domain or None,
        "--max-length": max_length,
        "--packing": packing or None,
        "--resume": resume or None,
        "--report-to": report_to,
        "--eval-fraction": eval_fraction,
        "--problems": problems,
        "--target": target,
        "--rv-model": rv_model,
        "--rv": rv,
        "--cd-model": cd_model,
        "--cd": cd,
        "--lambda-rv": lambda_rv,
        "--lambda-cd": lambda_cd,
        "--num-generations": num_generations,
        "--max-completion-length": max_completion_length,
        "--engine": engine,
        "--pairs": pairs,
        "--beta": beta,
        "--curriculum": curriculum,
        "--experts": experts,
        "--no-mixture": no_mixture or None,
        "--mixture-budget": mixture_budget,
        "--teacher": teacher,
        "--kd-cache": kd_cache,
        "--kd-loss": kd_loss,
        "--mix-weight": mix_weight,
        "--temperature": temperature,
        "--kd-weight": kd_weight,
        "--ce-weight": ce_weight,
        "--top-k": top_k,
    }
    check(method, given)
    # one unwrapped line per stage or branch, so the output greps; paths and filters may hold brackets
    console.print(RUNNERS[method](data, base, out, method, given), markup=False, soft_wrap=True)
