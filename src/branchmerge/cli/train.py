"""`branchmerge train`: SFT (full, LoRA, QLoRA or DoRA), RV/CD reward models, GRPO and DPO of a student.

One command, one `--method`; each method's options sit in their own help panel, and an option given to a method
that does not read it is an error rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from pydantic import BaseModel, ValidationError

from branchmerge.cli.main import command, console
from branchmerge.cli.process import band
from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, SFTExample, Trace, read_jsonl

SFT_PANEL, REWARD, GRPO, DPO = "SFT (full, lora, qlora, dora)", "reward", "grpo", "dpo"  # help panels
Options = dict[str, Any]  # option name ("--rv") -> value given, or None

SFT = {"full", "lora", "qlora", "dora"}
# Which methods read each method-specific option.
_APPLIES = {
    "--max-length": SFT | {"reward", "dpo"},
    "--packing": SFT,
    "--resume": SFT,
    "--report-to": SFT,
    "--eval-fraction": SFT,
    "--problems": {"reward", "dpo"},
    "--target": {"reward"},
    "--rv-model": {"grpo"},
    "--rv": {"grpo", "dpo"},
    "--cd-model": {"grpo"},
    "--cd": {"grpo"},
    "--lambda-rv": {"grpo"},
    "--lambda-cd": {"grpo"},
    "--num-generations": {"grpo"},
    "--max-completion-length": {"grpo"},
    "--pairs": {"dpo"},
    "--beta": {"grpo", "dpo"},
}
# Options that set a field of the method's settings model.
_FIELDS = {
    "--max-steps": "max_steps",
    "--batch-size": "batch_size",
    "--lr": "learning_rate",
    "--seed": "seed",
    "--max-length": "max_length",
    "--num-generations": "num_generations",
    "--max-completion-length": "max_completion_length",
    "--beta": "beta",
    "--packing": "packing",
    "--resume": "resume",
    "--report-to": "report_to",
}


@command("train")
def train(
    data: Annotated[
        Path,
        typer.Argument(
            help="SFT examples (full, lora, qlora, dora), scored traces (reward), problems (grpo) or traces (dpo)."
        ),
    ],
    base: Annotated[Path, typer.Option("--base", help="Base checkpoint to train.")],
    out: Annotated[Path, typer.Option("--out", help="Output checkpoint folder.")],
    method: Annotated[
        str, typer.Option("--method", help="full | lora | qlora | dora | reward | grpo | dpo.")
    ] = "full",
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Default 100.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Default 16 (SFT), 8 otherwise.")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Default per method (see the library).")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    domain: Annotated[list[str] | None, typer.Option("--domain", help="Train only on these domains.")] = None,
    max_length: Annotated[
        int | None, typer.Option("--max-length", help="Tokens per example: SFT, reward, dpo (default 4096).")
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
    pairs: Annotated[
        str | None, typer.Option("--pairs", help="verified (default) or verbosity.", rich_help_panel=DPO)
    ] = None,
    beta: Annotated[
        float | None, typer.Option("--beta", help="DPO β (0.1) / GRPO KL weight (0).", rich_help_panel=DPO)
    ] = None,
) -> None:
    """Train a student: SFT (TRL SFTTrainer, loss on assistant tokens only; QLoRA needs a CUDA GPU and
    bitsandbytes), an RV/CD reward model (a regressor
    with held-out MAE and Spearman), GRPO (format + accuracy + λ·RV/CD range rewards) or DPO; saves full weights.

    Example: branchmerge train sft.jsonl --base ./student --out ./expert-add --domain add --max-steps 100

    Example: branchmerge train sft.jsonl --method dora --packing --eval-fraction 0.1 --resume --base ./student --out ./expert

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
        "--pairs": pairs,
        "--beta": beta,
    }
    _check(method, given)
    console.print(_RUNNERS[method](data, base, out, method, given))


def _check(method: str, given: Options) -> None:
    """A known method, and no option it would ignore."""
    if method not in _RUNNERS:
        raise BranchmergeError(f"--method {method!r}: not a training method (known: {', '.join(_RUNNERS)})")
    for option, value in given.items():
        if value is not None and option in _APPLIES and method not in _APPLIES[option]:
            methods = " / ".join(sorted(_APPLIES[option]))
            raise BranchmergeError(f"{option}: applies to --method {methods}, not {method}")


def _settings(cls: type[BaseModel], for_method: str, given: Options, **fixed: Any) -> Any:
    """`cls` from the options given (the rest keep the library's defaults); errors name the option."""
    kwargs = {_FIELDS[o]: v for o, v in given.items() if o in _FIELDS and v is not None}
    try:
        return cls(**kwargs, **fixed)
    except ValidationError as e:
        err = e.errors()[0]
        option = next((o for o, f in _FIELDS.items() if err["loc"] and f == err["loc"][0]), None)
        message = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
        raise BranchmergeError(
            f"train --method {for_method}: {option + ': ' if option else ''}{message}"
        ) from None


def _choice(option: str, value: str | None, known: tuple[str, ...]) -> str:
    if value is None:
        return known[0]
    if value not in known:
        raise BranchmergeError(f"{option} {value!r}: expected one of {', '.join(known)}")
    return value


def _band(option: str, value: str | None) -> tuple[float, float] | None:
    parsed = band(option, value)
    if parsed is not None and not 0 <= parsed[0] <= parsed[1] <= 9:
        raise BranchmergeError(f"{option} {value!r}: expected 0 ≤ LOW ≤ HIGH ≤ 9")
    return None if parsed is None else (float(parsed[0]), float(parsed[1]))


def _problems(given: Options, method: str) -> dict[str, Problem]:
    path = given["--problems"]
    if path is None:
        raise BranchmergeError(
            f"--problems: required with --method {method} (the problems the traces answer)"
        )
    return {p.id: p for p in read_jsonl(path, Problem)}


def _traces(data: Path, given: Options, method: str) -> tuple[list[Trace], dict[str, Problem]]:
    """The traces and their problems, both kept to `--domain` when given; every trace must name a known problem."""
    problems = _problems(given, method)
    traces = read_jsonl(data, Trace)
    unknown = sorted({t.problem_id for t in traces} - set(problems))
    if unknown:
        raise BranchmergeError(
            f"{data}: {len(unknown)} problem ids are not in {given['--problems']} (first: {unknown[0]!r})"
        )
    domains = given["--domain"]
    if domains:
        problems = {k: p for k, p in problems.items() if p.domain in domains}
        traces = [t for t in traces if t.problem_id in problems]
    return traces, problems


def _sft(data: Path, base: Path, out: Path, method: str, given: Options) -> str:
    from branchmerge.train import SFTSettings, train_sft
    from branchmerge.train.sft import split_heldout

    settings = _settings(SFTSettings, method, given, method=method)
    examples = [
        e for e in read_jsonl(data, SFTExample) if not given["--domain"] or e.domain in given["--domain"]
    ]
    heldout: list[SFTExample] = []
    fraction = given["--eval-fraction"]
    if fraction is not None:
        if not 0 < fraction < 1:
            raise BranchmergeError(f"--eval-fraction {fraction}: expected a number between 0 and 1")
        examples, heldout = split_heldout(examples, fraction, settings.seed)
    r = train_sft(examples, base, out, settings, eval_examples=heldout, label=out.name)
    resumed = f" (resumed at step {r.resumed_from_step})" if r.resumed_from_step is not None else ""
    losses = ", ".join(f"{d} {loss:.3f}" for d, loss in r.eval_losses.items())
    held = f"; held-out loss ({len(heldout)} examples): {losses}" if heldout else ""
    return (
        f"{r.steps} steps{resumed} on {r.examples} examples, loss {r.first_loss:.3f} → {r.final_loss:.3f}"
        f"{held} → {out}"
    )


def _reward(data: Path, base: Path, out: Path, method: str, given: Options) -> str:
    from branchmerge.train.reward_model import RewardModelSettings, Target, train_reward_model

    target = _choice("--target", given["--target"], ("rv", "cd"))
    settings = _settings(RewardModelSettings, method, given)
    traces, problems = _traces(data, given, method)
    r = train_reward_model(traces, problems, base, out, cast(Target, target), settings, label=out.name)
    rho = "n/a" if r.spearman is None else f"{r.spearman:.2f}"
    return (
        f"{target} reward model on {r.train} traces ({r.skipped} without a {target} score skipped): "
        f"held-out ({r.heldout}) MAE {r.mae:.2f}, Spearman {rho} → {out}"
    )


def _grpo(data: Path, base: Path, out: Path, method: str, given: Options) -> str:
    from branchmerge.train.grpo import GRPOSettings, train_grpo

    settings = _settings(GRPOSettings, method, given)
    problems = [
        p for p in read_jsonl(data, Problem) if not given["--domain"] or p.domain in given["--domain"]
    ]
    r = train_grpo(
        problems,
        base,
        out,
        settings,
        rv_model=given["--rv-model"],
        rv_band=_band("--rv", given["--rv"]),
        cd_model=given["--cd-model"],
        cd_band=_band("--cd", given["--cd"]),
        lambda_rv=1.0 if given["--lambda-rv"] is None else given["--lambda-rv"],
        lambda_cd=1.0 if given["--lambda-cd"] is None else given["--lambda-cd"],
        label=out.name,
    )
    parts = ", ".join(f"{name.removesuffix('_reward')} {a:.2f} → {b:.2f}" for name, (a, b) in r.parts.items())
    return (
        f"{r.steps} GRPO steps on {r.problems} problems, reward {r.first_reward:.3f} → {r.last_reward:.3f} "
        f"({parts}; {r.clipped_ratio:.0%} cut at --max-completion-length) → {out}"
    )


def _dpo(data: Path, base: Path, out: Path, method: str, given: Options) -> str:
    from branchmerge.train.dpo import DPOSettings, PairMode, build_preference_pairs, train_dpo

    mode = _choice("--pairs", given["--pairs"], ("verified", "verbosity"))
    rv = _band("--rv", given["--rv"])
    if mode == "verbosity" and rv is None:
        raise BranchmergeError("--pairs verbosity: needs --rv L:H, the RV band of the chosen traces")
    settings = _settings(DPOSettings, method, given)
    traces, problems = _traces(data, given, method)
    rows, report = build_preference_pairs(traces, problems, cast(PairMode, mode), rv, settings.seed)
    unpaired = ", ".join(f"{n} {why}" for why, n in sorted(report.problems_without_pair.items())) or "none"
    r = train_dpo(rows, base, out, settings, label=out.name)
    return (
        f"{r.pairs} pairs (problems without a pair: {unpaired}), {r.steps} DPO steps, loss {r.first_loss:.3f} → "
        f"{r.final_loss:.3f}, reward accuracy {r.first_accuracy:.2f} → {r.final_accuracy:.2f} → {out}"
    )


_RUNNERS: dict[str, Callable[[Path, Path, Path, str, Options], str]] = {
    "full": _sft,
    "lora": _sft,
    "qlora": _sft,
    "dora": _sft,
    "reward": _reward,
    "grpo": _grpo,
    "dpo": _dpo,
}
