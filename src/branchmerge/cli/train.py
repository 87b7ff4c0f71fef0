"""`branchmerge train sft | reward | grpo | dpo | kd`: one subcommand per training method.

Each subcommand's options are the fields of that method's request in `train/jobs.py` (its settings model plus the
inputs that go with it) under the same names, so an option a method does not read does not exist for it, and the
rules between options are the request's validators. `train_runs` turns a parsed request into one library call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from branchmerge.cli.main import app, clean_errors, console, err_console
from branchmerge.cli.train_runs import build_job, run_dpo, run_grpo, run_kd, run_reward, run_sft

# click's UsageError, or the copy of click that newer typer releases ship (typer does not export the class)
_UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class _OneLineUsageErrors(TyperGroup):
    """An unknown subcommand or option, or a missing one, reads as one line and exit 2, like every other error."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _UsageError as e:
            names, at = [], getattr(e, "ctx", None) or ctx
            while at.parent is not None:  # "train grpo", whatever the program was called
                names.append(at.info_name or "")
                at = at.parent
            message = e.format_message()  # type: ignore[attr-defined]
            err_console.print(
                f"[red]error:[/red] {' '.join(reversed(names))}: {message}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(2) from None


train_app = typer.Typer(
    cls=_OneLineUsageErrors,
    no_args_is_help=True,
    help="Train a student: SFT (full, LoRA, QLoRA or DoRA; in one pass, as a curriculum or as branch experts), an "
    "RV/CD reward model, GRPO, DPO, or logit KD from a teacher. Saves full weights.\n\n"
    "Example: branchmerge train sft sft.jsonl --base ./student --out ./expert-add --domain add --max-steps 100",
)
app.add_typer(train_app, name="train")


def _options(given: dict[str, Any]) -> dict[str, Any]:
    """A command's options without the data, checkpoints and domain filter, which are not the request's fields."""
    return {k: v for k, v in given.items() if k not in ("ctx", "data", "base", "out", "domain")}


def _show(lines: str) -> None:
    # one unwrapped line per stage or branch, so the output greps; paths and filters may hold brackets
    console.print(lines, markup=False, soft_wrap=True)


# Options every method reads; the defaults are the settings models' (train/).
Base = Annotated[Path, typer.Option("--base", help="Base checkpoint to train.")]
Out = Annotated[Path, typer.Option("--out", help="Output checkpoint folder.")]
MaxSteps = Annotated[int | None, typer.Option("--max-steps", help="Default 100.")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="Default 16 (sft), 8 otherwise.")]
LearningRate = Annotated[float | None, typer.Option("--lr", help="Default per method (see the library).")]
Seed = Annotated[int | None, typer.Option("--seed")]
Domain = Annotated[list[str] | None, typer.Option("--domain", help="Train only on these domains.")]
MaxLength = Annotated[int | None, typer.Option("--max-length", help="Tokens per example (default 4096).")]
Problems = Annotated[Path, typer.Option("--problems", help="Problems JSONL the traces answer.")]
RVBand = Annotated[str | None, typer.Option("--rv", help="RV band L:H (integers 0-9).")]
STAGES = "Curriculum and branch experts"


@train_app.command("sft")
@clean_errors
def sft(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="SFT examples JSONL.")],
    base: Base,
    out: Out,
    method: Annotated[
        str | None, typer.Option("--method", help="full (default) | lora | qlora | dora.")
    ] = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    learning_rate: LearningRate = None,
    seed: Seed = None,
    domain: Domain = None,
    max_length: MaxLength = None,
    packing: Annotated[
        bool,
        typer.Option(
            "--packing", help="Pack examples into max-length rows; they never attend to each other."
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Checkpoint to OUT.partial-ckpt/ and continue from the last checkpoint there."
        ),
    ] = False,
    report_to: Annotated[
        str | None,
        typer.Option(
            "--report-to",
            help="auto (TensorBoard when installed) | tensorboard | wandb | none; TensorBoard logs go to logs/ "
            "beside OUT.",
        ),
    ] = None,
    eval_fraction: Annotated[
        float | None,
        typer.Option(
            "--eval-fraction",
            help="Hold out this fraction of each domain's problems (seeded) for a per-domain eval loss.",
        ),
    ] = None,
    curriculum: Annotated[
        Path | None,
        typer.Option(
            "--curriculum",
            help="YAML list of stages (name, where, epochs | max_steps, learning_rate, settings), trained in "
            "order, each from the last; stages are kept in OUT.stages/ and a rerun reuses the unchanged ones.",
            rich_help_panel=STAGES,
        ),
    ] = None,
    experts: Annotated[
        str | None,
        typer.Option(
            "--experts",
            help="domain | teacher: one expert per domain or teacher from --base, OUT/expert-<name>/, plus "
            "the data-mixture baseline OUT/mixture/; with --curriculum every branch runs the stages.",
            rich_help_panel=STAGES,
        ),
    ] = None,
    no_mixture: Annotated[
        bool, typer.Option("--no-mixture", help="Train the experts only.", rich_help_panel=STAGES)
    ] = False,
    mixture_budget: Annotated[
        str | None,
        typer.Option(
            "--mixture-budget",
            help="sum (default: the mixture gets all experts' steps together) | same (one expert's steps).",
            rich_help_panel=STAGES,
        ),
    ] = None,
) -> None:
    """SFT through TRL's SFTTrainer, loss on assistant tokens only (QLoRA needs a CUDA GPU and bitsandbytes): in
    one pass, as a curriculum of stages, or as branch experts.

    Example: branchmerge train sft sft.jsonl --base ./student --out ./expert-add --domain add --max-steps 100

    Example: branchmerge train sft sft.jsonl --method dora --packing --eval-fraction 0.1 --resume --base ./student --out ./expert

    Example: branchmerge train sft sft.jsonl --curriculum curriculum.yaml --base ./student --out ./student-cur

    Example: branchmerge train sft sft.jsonl --experts domain --mixture-budget same --max-steps 50 --base ./student --out ./branches
    """
    given = dict(locals())
    from branchmerge.train.jobs import SFTJob

    job = build_job(SFTJob, _options(given), ctx)
    _show(run_sft(job, data, base, out, domain))


@train_app.command("reward")
@clean_errors
def reward(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="Scored traces JSONL.")],
    base: Base,
    out: Out,
    problems: Problems,
    target: Annotated[str | None, typer.Option("--target", help="rv (default) | cd.")] = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    learning_rate: LearningRate = None,
    seed: Seed = None,
    domain: Domain = None,
    max_length: MaxLength = None,
) -> None:
    """An RV or CD reward model: a regressor on the scored traces, with held-out MAE and Spearman.

    Example: branchmerge train reward scored.jsonl --problems problems.jsonl --target rv --base ./student --out ./rv-model
    """
    given = dict(locals())
    from branchmerge.train.jobs import RewardJob

    job = build_job(RewardJob, _options(given), ctx)
    _show(run_reward(job, data, base, out, domain))


@train_app.command("grpo")
@clean_errors
def grpo(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="Problems JSONL.")],
    base: Base,
    out: Out,
    rv_model: Annotated[Path | None, typer.Option("--rv-model", help="RV reward model.")] = None,
    rv: RVBand = None,
    cd_model: Annotated[Path | None, typer.Option("--cd-model", help="CD reward model.")] = None,
    cd: Annotated[str | None, typer.Option("--cd", help="CD band L:H (integers 0-9).")] = None,
    lambda_rv: Annotated[float | None, typer.Option("--lambda-rv", help="Default 1.")] = None,
    lambda_cd: Annotated[float | None, typer.Option("--lambda-cd", help="Default 1.")] = None,
    num_generations: Annotated[
        int | None, typer.Option("--num-generations", help="Group size (default 8).")
    ] = None,
    max_completion_length: Annotated[
        int | None, typer.Option("--max-completion-length", help="Generated tokens (default 4096).")
    ] = None,
    beta: Annotated[float | None, typer.Option("--beta", help="KL weight to the base (default 0).")] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            "--engine",
            help="Samples by: auto (vLLM with a CUDA GPU, else builtin), builtin (transformers) or vllm.",
        ),
    ] = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    learning_rate: LearningRate = None,
    seed: Seed = None,
    domain: Domain = None,
) -> None:
    """GRPO through TRL's GRPOTrainer with the reward format + accuracy + λ·RV/CD range terms.

    Example: branchmerge train grpo problems.jsonl --base ./expert --out ./grpo --rv-model ./rv-model --rv 2:5 --lambda-rv 0.5
    """
    given = dict(locals())
    from branchmerge.train.jobs import GRPOJob

    job = build_job(GRPOJob, _options(given), ctx)
    _show(run_grpo(job, data, base, out, domain))


@train_app.command("dpo")
@clean_errors
def dpo(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="Traces JSONL.")],
    base: Base,
    out: Out,
    problems: Problems,
    pairs: Annotated[str | None, typer.Option("--pairs", help="verified (default) | verbosity.")] = None,
    rv: Annotated[
        str | None, typer.Option("--rv", help="With --pairs verbosity: the RV band L:H of the chosen traces.")
    ] = None,
    beta: Annotated[float | None, typer.Option("--beta", help="DPO β (default 0.1).")] = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    learning_rate: LearningRate = None,
    seed: Seed = None,
    domain: Domain = None,
    max_length: MaxLength = None,
) -> None:
    """DPO through TRL's DPOTrainer on pairs built from the traces: verified (a right trace over a wrong one) or
    verbosity (a right trace inside the RV band over one outside it).

    Example: branchmerge train dpo traces.jsonl --problems problems.jsonl --pairs verbosity --rv 2:5 --base ./expert --out ./dpo
    """
    given = dict(locals())
    from branchmerge.train.jobs import DPOJob

    job = build_job(DPOJob, _options(given), ctx)
    _show(run_dpo(job, data, base, out, domain))


@train_app.command("kd")
@clean_errors
def kd(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="SFT examples JSONL.")],
    base: Base,
    out: Out,
    teacher: Annotated[
        Path | None, typer.Option("--teacher", help="Teacher checkpoint sharing the student's tokenizer.")
    ] = None,
    kd_cache: Annotated[
        Path | None,
        typer.Option(
            "--kd-cache",
            help="Cache of the teacher's top-k log-probs: filled first when --teacher is given too, then trained "
            "from; alone, it must already hold every example.",
        ),
    ] = None,
    kd_loss: Annotated[
        str | None,
        typer.Option(
            "--kd-loss", help="forward KL(teacher‖student) (default) | reverse KL(student‖teacher) | mix."
        ),
    ] = None,
    mix_weight: Annotated[
        float | None,
        typer.Option("--mix-weight", help="With --kd-loss mix: α·forward + (1 − α)·reverse (0.5)."),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", help="Softmax τ of both models (1).")
    ] = None,
    kd_weight: Annotated[
        float | None, typer.Option("--kd-weight", help="Loss = ce-weight·CE + kd-weight·KD (0.5).")
    ] = None,
    ce_weight: Annotated[
        float | None,
        typer.Option("--ce-weight", help="Weight of cross-entropy on the examples' own tokens (0.5)."),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option("--top-k", help="Teacher log-probs kept per token when filling the cache (20)."),
    ] = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    learning_rate: LearningRate = None,
    seed: Seed = None,
    domain: Domain = None,
    max_length: MaxLength = None,
) -> None:
    """Logit KD of the student from a teacher that shares its tokenizer: online, through a top-k cache, or both
    (fill the cache, then train from it).

    Example: branchmerge train kd sft.jsonl --teacher ./teacher --kd-cache ./kd-cache --kd-loss mix --mix-weight 0.3 --base ./student --out ./student-kd
    """
    given = dict(locals())
    from branchmerge.train.jobs import KDJob

    job = build_job(KDJob, _options(given), ctx)
    _show(run_kd(job, data, base, out, domain))
