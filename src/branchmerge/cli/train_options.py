"""What `branchmerge train` does with its options: which method reads each one, and one runner per method.

`train.py` declares the options; this module checks them against the method (an option a method would ignore is
an error) and turns them into one library call per method, returning the lines to print.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ValidationError

from branchmerge.cli.process import band
from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, SFTExample, Trace, read_jsonl

if TYPE_CHECKING:
    from branchmerge.train import CurriculumStage, SFTSettings
    from branchmerge.train.branches import BranchPlan, Budget, SplitBy
    from branchmerge.train.curriculum import CurriculumResult, CurriculumStageResult
    from branchmerge.train.sft import TrainResult

# help panels
SFT_PANEL, STAGES_PANEL = "SFT (full, lora, qlora, dora)", "SFT: curriculum and branch experts"
REWARD, GRPO, DPO, KD = "reward", "grpo", "dpo", "kd"
Options = dict[str, Any]  # option name ("--rv") -> value given, or None

SFT = {"full", "lora", "qlora", "dora"}
_KD = {"kd"}
# Which methods read each method-specific option.
_APPLIES = {
    "--max-length": SFT | {"reward", "dpo", "kd"},
    "--packing": SFT,
    "--resume": SFT,
    "--report-to": SFT,
    "--eval-fraction": SFT,
    "--curriculum": SFT,
    "--experts": SFT,
    "--no-mixture": SFT,
    "--mixture-budget": SFT,
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
    "--engine": {"grpo"},
    "--pairs": {"dpo"},
    "--beta": {"grpo", "dpo"},
    "--teacher": _KD,
    "--kd-cache": _KD,
    "--kd-loss": _KD,
    "--mix-weight": _KD,
    "--temperature": _KD,
    "--kd-weight": _KD,
    "--ce-weight": _KD,
    "--top-k": _KD,
}
# Options read only together with another one.
_NEEDS = {"--no-mixture": "--experts", "--mixture-budget": "--experts"}
# Options that cannot go together: the curriculum and branch runs hold out no evaluation set.
_EXCLUDES = {"--eval-fraction": ("--curriculum", "--experts")}
# Options that set a field of the method's settings model.
_FIELDS = {
    "--max-steps": "max_steps",
    "--batch-size": "batch_size",
    "--lr": "learning_rate",
    "--seed": "seed",
    "--max-length": "max_length",
    "--num-generations": "num_generations",
    "--max-completion-length": "max_completion_length",
    "--engine": "engine",
    "--beta": "beta",
    "--packing": "packing",
    "--resume": "resume",
    "--report-to": "report_to",
    "--kd-loss": "kd_loss",
    "--mix-weight": "mix_weight",
    "--temperature": "temperature",
    "--kd-weight": "kd_weight",
    "--ce-weight": "ce_weight",
    "--top-k": "top_k",
}


def check(method: str, given: Options) -> None:
    """A known method, no option it would ignore, and no option without the one it goes with."""
    if method not in RUNNERS:
        raise BranchmergeError(f"--method {method!r}: not a training method (known: {', '.join(RUNNERS)})")
    for option, value in given.items():
        if value is not None and option in _APPLIES and method not in _APPLIES[option]:
            methods = " / ".join(sorted(_APPLIES[option]))
            raise BranchmergeError(f"{option}: applies to --method {methods}, not {method}")
    for option, needed in _NEEDS.items():
        if given[option] is not None and given[needed] is None:
            raise BranchmergeError(f"{option}: applies only with {needed}")
    for option, others in _EXCLUDES.items():
        clash = [o for o in others if given[option] is not None and given[o] is not None]
        if clash:
            raise BranchmergeError(f"{option}: cannot be combined with {clash[0]}")


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


def _sft_examples(data: Path, given: Options) -> list[SFTExample]:
    return [e for e in read_jsonl(data, SFTExample) if not given["--domain"] or e.domain in given["--domain"]]


def _losses(r: TrainResult | CurriculumResult | CurriculumStageResult) -> str:
    return f"loss {r.first_loss:.3f} → {r.final_loss:.3f}"


# ------------------------------------------------------------------------------------------ SFT --------------


def _sft(data: Path, base: Path, out: Path, method: str, given: Options) -> str:
    from branchmerge.train import SFTSettings, load_curriculum

    settings = _settings(SFTSettings, method, given, method=method)
    stages = None if given["--curriculum"] is None else load_curriculum(given["--curriculum"])
    examples = _sft_examples(data, given)
    if given["--experts"] is not None:
        return _experts(examples, base, out, settings, stages, given)
    if stages is not None:
        return _curriculum(examples, base, out, settings, stages)
    return _plain_sft(examples, base, out, settings, given)


def _plain_sft(
    examples: list[SFTExample], base: Path, out: Path, settings: SFTSettings, given: Options
) -> str:
    from branchmerge.train import train_sft
    from branchmerge.train.sft import split_heldout

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
    return f"{r.steps} steps{resumed} on {r.examples} examples, {_losses(r)}{held} → {out}"


def _curriculum(
    examples: list[SFTExample],
    base: Path,
    out: Path,
    settings: SFTSettings,
    stages: Sequence[CurriculumStage],
) -> str:
    """One line per stage, then the run's totals and where the stages are kept."""
    from branchmerge.train import train_curriculum
    from branchmerge.train.curriculum import describe_where, stages_dir

    r = train_curriculum(examples, base, out, stages, settings, label=out.name)
    lines = [
        f"stage {i}/{len(r.stages)} {s.name} ({describe_where(s.where)}): {s.examples} examples, "
        f"{s.steps} steps, {_losses(s)}{' (reused: unchanged since the last run)' if s.reused else ''}"
        for i, s in enumerate(r.stages, start=1)
    ]
    lines.append(f"{r.steps} steps in {len(r.stages)} stages → {out} (each stage kept in {stages_dir(out)}/)")
    return "\n".join(lines)


def _experts(
    examples: list[SFTExample],
    base: Path,
    out: Path,
    settings: SFTSettings,
    stages: Sequence[CurriculumStage] | None,
    given: Options,
) -> str:
    """One expert per domain or teacher (and the mixture unless --no-mixture), all from `base`, in `out/`."""
    from branchmerge.train import plan_branches, train_branches

    by = _choice("--experts", given["--experts"], ("domain", "teacher"))
    budget = _choice("--mixture-budget", given["--mixture-budget"], ("sum", "same"))
    mixture = given["--no-mixture"] is None
    plans = plan_branches(
        examples, cast("SplitBy", by), mixture, cast("Budget", budget), settings, curriculum=stages
    )
    results = train_branches(examples, base, out, plans)
    return "\n".join(_branch_line(p, results[p.name]) for p in plans)


def _branch_line(plan: BranchPlan, r: TrainResult | CurriculumResult) -> str:
    from branchmerge.train.curriculum import CurriculumResult, describe_where, stages_dir

    if isinstance(r, CurriculumResult):
        counts = " + ".join(str(s.examples) for s in r.stages)
        size = f"{len(r.stages)} stages ({counts} examples), {r.steps} steps"
        kept = f" (stages in {stages_dir(r.out_dir)}/)"
    else:
        size, kept = f"{r.examples} examples, {r.steps} steps", ""
    return f"{plan.name} ({describe_where(plan.where)}): {size}, {_losses(r)} → {r.out_dir}{kept}"


# ------------------------------------------------------------------------------- reward, grpo, dpo ----------


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


# ------------------------------------------------------------------------------------------ KD ---------------


def _kd(data: Path, base: Path, out: Path, method: str, given: Options) -> str:
    """Logit KD, online from --teacher, from a filled --kd-cache, or both (fill the cache, then train from it)."""
    from branchmerge.train import KDSettings, train_kd

    teacher, cache = given["--teacher"], given["--kd-cache"]
    if teacher is None and cache is None:
        raise BranchmergeError(
            "--method kd: give --teacher DIR (online), --kd-cache DIR (an already filled cache), or both "
            "(fill the cache from the teacher, then train from it)"
        )
    if given["--top-k"] is not None and (teacher is None or cache is None):
        raise BranchmergeError("--top-k: read only when filling a cache (--teacher with --kd-cache)")
    s = _settings(KDSettings, method, given)
    if given["--mix-weight"] is not None and s.kd_loss != "mix":
        raise BranchmergeError(f"--mix-weight: read only with --kd-loss mix, not {s.kd_loss}")
    r = train_kd(_sft_examples(data, given), base, out, s, teacher, cache, label=out.name)
    lines = []
    if r.cache is not None:
        c = r.cache
        lines.append(
            f"cache {c.cache_dir}: {c.cached} examples cached ({c.skipped} already there), {c.tokens} tokens "
            f"at top-{c.k}: {c.bytes_per_token} bytes/token, {c.disk_bytes / 2**20:.1f} MiB on disk"
        )
    lines.append(
        f"{r.steps} KD steps ({r.mode}, {s.kd_loss} KL, τ {s.temperature:g}) on {r.examples} examples, "
        f"{_losses(r)} = {s.ce_weight:g}·CE + {s.kd_weight:g}·KD: CE {r.first_ce:.3f} → {r.final_ce:.3f}, "
        f"KD {r.first_kd:.3f} → {r.final_kd:.3f} → {out}"
    )
    return "\n".join(lines)


RUNNERS: dict[str, Callable[[Path, Path, Path, str, Options], str]] = {
    "full": _sft,
    "lora": _sft,
    "qlora": _sft,
    "dora": _sft,
    "reward": _reward,
    "grpo": _grpo,
    "dpo": _dpo,
    "kd": _kd,
}
