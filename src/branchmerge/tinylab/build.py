"""Reproduce the shipped tinylab teacher and student-base weights from a seed: `python -m branchmerge.tinylab.build`.

A plain torch loop (nanoGPT style) rather than TRL: the whole recipe fits on a screen, it has no hidden defaults
(bf16, gradient checkpointing, max_length) to pin, and it runs in minutes on 2 CPU cores.

- teacher: every domain, levels 1..4, enough steps to pass >= 90% of held-out items greedily and at T=0.6.
- student base, in two passes, shaped like the setting Branch-Merge starts from (TinyR1 merges experts of a
  distilled generalist): a draft with the teacher's shape and a quarter of its steps, then the generalist pass
  (`GENERALIST_PLAN`), 250 steps on every domain. The result is competent on every domain and has room left on
  the longer items (greedy, 40 validation items per level, levels 1..4: add 100/90/68/33%, sort 78/53/30/20%,
  compare 88/90/85/90%), which each domain's expert learns from the teacher's traces.
  Generalist passes tried (validation items of another seed than any evaluation set): 150 steps left add and
  sort far behind (46% / 32% overall); 450 steps saturated add and compare (99% / 97%), leaving their experts
  nothing to gain; a pass on levels 1..3 only lost level 4 entirely (0% add and sort), and experts trained on
  it forgot the other domains without learning level 4. The draft alone (the earlier student base, 27% / 19% /
  51%) was too weak for any merge of its experts to beat it.

Held-out items come from `heldout_problems` (a different seed, training questions excluded).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from peft import LoraConfig, get_peft_model
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import PreTrainedTokenizerBase, Qwen3ForCausalLM

from branchmerge.records import Problem
from branchmerge.teachers.local import LocalModel, SamplingParams
from branchmerge.tinylab.domains import DOMAINS, MAX_LEVEL, generate_problems
from branchmerge.tinylab.modeling import random_model, save_checkpoint, tiny_qwen3_config
from branchmerge.tinylab.tokenizer import build_tokenizer
from branchmerge.train.sft_methods import TARGET_MODULES

ALL_LEVELS = tuple(range(1, MAX_LEVEL + 1))
DEFAULT_SEED = 20261122
HELDOUT_SEED_OFFSET = 7919  # held-out items use seed + this, so they never share the training stream
IGNORE = -100  # label for tokens outside the assistant turn


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class TrainPlan:
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    levels: tuple[int, ...] = ALL_LEVELS
    mix: tuple[float, ...] = (
        1.0,
        1.0,
        1.0,
    )  # relative share of each domain (DOMAINS order) in the training items
    weight_decay: float = 0.1
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio, not to 0: the last steps still learn


TEACHER_SHAPE = ModelShape(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=384)
TEACHER_PLAN = TrainPlan(steps=1200, batch_size=64, lr=2e-3, warmup_steps=60)
# The student base has the teacher's shape but a quarter of its training: it knows the format and solves short
# items, and fails most long ones (27% / 19% / 51% greedy on held-out add / sort / compare).
STUDENT_SHAPE = TEACHER_SHAPE
STUDENT_PLAN = TrainPlan(steps=300, batch_size=64, lr=2e-3, warmup_steps=30)
# Then the generalist pass: the student continues on every domain, as a data-mixture SFT would (full weights,
# batch 32, cosine to 0), on items of its own seed. The shipped student base is the result: competent on every
# domain, as a distilled generalist is before Branch-Merge, with room left on the longer items.
GENERALIST_PLAN = TrainPlan(
    steps=250, batch_size=32, lr=1e-3, warmup_steps=10, weight_decay=0.0, min_lr_ratio=0.0
)
GENERALIST_THREADS = (
    1  # pinned: bit-for-bit reruns need one thread count, and one is fastest on a busy machine
)
# What the demo does to the student (recipes/demo.yaml: full SFT, 150 steps, batch 32, lr 1e-3, cosine to 0).
EXPERT_PLAN = TrainPlan(steps=150, batch_size=32, lr=1e-3, warmup_steps=5, weight_decay=0.0, min_lr_ratio=0.0)
EXPERT_PROBLEMS = 1000  # demo.yaml train_per_domain; each trace twice (two sampling temperatures)


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE outside the assistant turn


def assistant_content(problem: Problem) -> str:
    """The Qwen3 thinking layout the teacher writes and the student learns (the SFTExample record)."""
    return f"<think>\n{problem.meta['solution']}\n</think>\n\n{problem.reference}"


def encode(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> Example:
    """Tokenize a chat; labels keep only the tokens the template marks as generated (content + <|im_end|>)."""
    enc: Any = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = list(enc["input_ids"])
    labels = [t if m else IGNORE for t, m in zip(ids, enc["assistant_masks"], strict=True)]
    return Example(ids, labels)


def encode_problems(tokenizer: PreTrainedTokenizerBase, problems: Sequence[Problem]) -> list[Example]:
    return [
        encode(
            tokenizer,
            [{"role": "user", "content": p.question}, {"role": "assistant", "content": assistant_content(p)}],
        )
        for p in problems
    ]


def training_problems(seed: int, plan: TrainPlan) -> list[Problem]:
    """Fresh items for one pass over `plan.steps` batches, split between domains by `plan.mix`."""
    total = plan.steps * plan.batch_size
    return [
        p
        for d, share in zip(DOMAINS, plan.mix, strict=True)
        for p in generate_problems(d, math.ceil(total * share / sum(plan.mix)), seed=seed, levels=plan.levels)
    ]


def heldout_problems(
    domain: str, seed: int, count: int = 200, exclude: set[str] | None = None
) -> list[Problem]:
    """Held-out items: another seed than training, and any question seen in training skipped."""
    return generate_problems(domain, count, seed=seed + HELDOUT_SEED_OFFSET, exclude=exclude)


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row (positions then start at 0 for every row, as at inference)."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def cosine_lr(step: int, plan: TrainPlan) -> float:
    """Linear warmup, then cosine from lr to lr * min_lr_ratio."""
    if step < plan.warmup_steps:
        return plan.lr * (step + 1) / plan.warmup_steps
    t = (step - plan.warmup_steps) / max(1, plan.steps - plan.warmup_steps)
    return plan.lr * (plan.min_lr_ratio + (1 - plan.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def train(
    model: torch.nn.Module,  # a Qwen3ForCausalLM, or one wrapped in LoRA adapters
    examples: Sequence[Example],
    plan: TrainPlan,
    pad_id: int,
    seed: int,
    progress: Progress | None = None,
    label: str = "train",
) -> list[float]:
    """AdamW on the assistant tokens only; batches from a seeded shuffle, epoch after epoch. Returns the losses.

    Batches mix lengths on purpose: length-grouped batches (one domain and level each) halve the padding but
    made the teacher learn several times slower per step.
    """
    rng = random.Random(seed)
    order: list[int] = []
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # norms: no weight decay
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": plan.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=plan.lr,
        betas=(0.9, 0.98),
    )
    task = progress.add_task(label, total=plan.steps, loss=float("nan")) if progress else None
    losses = []
    for step in range(plan.steps):
        if len(order) < plan.batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        batch = [examples[i] for i in order[: plan.batch_size]]
        del order[: plan.batch_size]
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, plan)
        loss = model(**collate(batch, pad_id)).loss  # mean over the assistant tokens of the batch
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress is not None and task is not None:
            progress.update(task, advance=1, loss=sum(losses[-20:]) / len(losses[-20:]))
    model.eval()
    return losses


def accuracy(
    model: LocalModel, problems: Sequence[Problem], temperature: float, seed: int = 0, batch_size: int = 64
) -> float:
    """Share of problems whose answer after </think>, whitespace-collapsed, equals the reference."""
    hits = 0
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        requests = [
            (
                [{"role": "user", "content": p.question}],
                SamplingParams(temperature=temperature, top_p=0.95, max_tokens=200, seed=seed + start + i),
            )
            for i, p in enumerate(chunk)
        ]
        for p, c in zip(chunk, model.complete(requests), strict=True):
            hits += " ".join(c.content.split()) == " ".join(p.reference.split())
    return hits / len(problems)


def make_progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
    )


def train_checkpoint(
    tokenizer: PreTrainedTokenizerBase,
    shape: ModelShape,
    plan: TrainPlan,
    problems: Sequence[Problem],
    seed: int,
    out_dir: Path,
    progress: Progress | None = None,
    label: str = "train",
) -> None:
    """Train one model from a seeded random init on `problems` and save it."""
    config = tiny_qwen3_config(tokenizer, **asdict(shape), max_position_embeddings=512)
    model = random_model(config, seed=seed)
    train(model, encode_problems(tokenizer, problems), plan, tokenizer.pad_token_id, seed, progress, label)
    save_checkpoint(model, tokenizer, out_dir)


def training_questions(seed: int = DEFAULT_SEED) -> set[str]:
    """Every question the teacher or the student base saw when built from `seed` (held-out sets exclude them)."""
    return {
        p.question
        for p in training_problems(seed, TEACHER_PLAN)
        + training_problems(seed + 1, STUDENT_PLAN)
        + training_problems(seed + 2, GENERALIST_PLAN)
    }


def generalist_pass(
    student: Path, out_dir: Path, seed: int = DEFAULT_SEED, progress: Progress | None = None
) -> None:
    """Continue `student` on every domain (`GENERALIST_PLAN`, items of seed + 2) and save it to `out_dir`.

    Runs on `GENERALIST_THREADS` threads with deterministic kernels whatever the caller set, and restores the
    caller's settings after.
    """
    tokenizer = build_tokenizer()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(GENERALIST_THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        model = Qwen3ForCausalLM.from_pretrained(student, dtype=torch.float32)
        examples = encode_problems(tokenizer, training_problems(seed + 2, GENERALIST_PLAN))
        train(model, examples, GENERALIST_PLAN, tokenizer.pad_token_id, seed + 2, progress, "generalist")
        save_checkpoint(model, tokenizer, out_dir)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def evaluate_dir(model_dir: Path, heldout: dict[str, list[Problem]], temperatures: Sequence[float]) -> dict:
    model = LocalModel(model_dir)
    return {
        d: {f"T={t:g}": round(accuracy(model, items, t), 3) for t in temperatures}
        for d, items in heldout.items()
    }


def expert_check(
    student: Path, heldout: dict[str, list[Problem]], seed: int, progress: Progress | None = None
) -> dict:
    """Fine-tune a copy of the student on one domain, as the demo does, and measure every domain before/after.

    The demo's traces are the teacher's correct answers, i.e. these generator solutions, one per temperature:
    EXPERT_PROBLEMS items, each twice; its experts are LoRA adapters (rank 16, alpha 32, every projection) merged
    back into full weights. The check passes when every expert beats the base on its own domain.
    """
    tokenizer = build_tokenizer()
    before = evaluate_dir(student, heldout, (0.0,))
    exclude = {p.question for items in heldout.values() for p in items}
    out: dict = {"plan": asdict(EXPERT_PLAN), "problems_per_domain": EXPERT_PROBLEMS, "experts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for domain in heldout:
            problems = generate_problems(domain, EXPERT_PROBLEMS, seed=seed + 3, exclude=exclude)
            lora = LoraConfig(r=16, lora_alpha=32, target_modules=TARGET_MODULES["qwen3"])
            model = get_peft_model(Qwen3ForCausalLM.from_pretrained(student, dtype=torch.float32), lora)
            examples = encode_problems(tokenizer, problems) * 2
            train(model, examples, EXPERT_PLAN, tokenizer.pad_token_id, seed, progress, f"expert {domain}")
            save_checkpoint(cast(Qwen3ForCausalLM, model.merge_and_unload()), tokenizer, Path(tmp) / domain)
            after = evaluate_dir(Path(tmp) / domain, heldout, (0.0,))
            out["experts"][domain] = {
                d: {"before": before[d]["T=0"], "after": after[d]["T=0"]} for d in heldout
            }
    return out


def build(
    out_dir: Path, seed: int = DEFAULT_SEED, heldout_count: int = 200, check_experts: bool = True
) -> dict:
    """Train and save teacher/ and student/ under `out_dir`, evaluate both, write accuracy.json; returns it.

    `check_experts` adds the expert check (about 4 minutes on 2 cores); the shipped accuracy.json has it.
    """
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)  # CPU kernels: costs nothing here, makes reruns bit-identical
    tokenizer = build_tokenizer()
    started = time.time()
    teacher_problems = training_problems(seed, TEACHER_PLAN)
    student_problems = training_problems(seed + 1, STUDENT_PLAN)
    with make_progress() as progress:
        train_checkpoint(
            tokenizer,
            TEACHER_SHAPE,
            TEACHER_PLAN,
            teacher_problems,
            seed,
            out_dir / "teacher",
            progress,
            "teacher",
        )
        with tempfile.TemporaryDirectory() as tmp:
            draft = Path(tmp) / "draft"
            train_checkpoint(
                tokenizer, STUDENT_SHAPE, STUDENT_PLAN, student_problems, seed + 1, draft, progress, "student"
            )
            generalist_pass(draft, out_dir / "student", seed, progress)
    seen = training_questions(seed)
    heldout = {d: heldout_problems(d, seed, heldout_count, exclude=seen) for d in DOMAINS}
    report: dict = {
        "seed": seed,
        "heldout_seed": seed + HELDOUT_SEED_OFFSET,
        "heldout_per_domain": heldout_count,
        "grading": "greedy (T=0) and T=0.6 top-p 0.95; answer after </think>, whitespace-collapsed, equals the reference",
    }
    for name, shape, plans in (
        ("teacher", TEACHER_SHAPE, [TEACHER_PLAN]),
        ("student", STUDENT_SHAPE, [STUDENT_PLAN, GENERALIST_PLAN]),
    ):
        params = sum(p.numel() for p in Qwen3ForCausalLM.from_pretrained(out_dir / name).parameters())
        report[name] = {"shape": asdict(shape), "plans": [asdict(p) for p in plans], "parameters": params}
        report[name]["accuracy"] = evaluate_dir(out_dir / name, heldout, (0.0, 0.6))
    report["train_and_eval_seconds"] = round(time.time() - started)
    if check_experts:
        with make_progress() as progress:
            report["expert_check"] = expert_check(out_dir / "student", heldout, seed, progress)
    report["build_seconds"] = round(time.time() - started)
    (out_dir / "accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m branchmerge.tinylab.build",
        description="Reproduce the shipped tinylab teacher and student-base weights from a seed.",
        epilog="example: python -m branchmerge.tinylab.build --seed 20261122 --out /tmp/tinylab-weights",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "weights")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (fixed so reruns match bit for bit)"
    )
    parser.add_argument(
        "--skip-expert-check", action="store_true", help="skip fine-tuning one expert per domain at the end"
    )
    parser.add_argument(
        "--generalist-from",
        type=Path,
        metavar="DRAFT",
        help="run only the generalist pass from this draft student into OUT/student (minutes, not the whole build)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.generalist_from is not None:
        torch.use_deterministic_algorithms(True)
        with make_progress() as progress:
            generalist_pass(args.generalist_from, args.out / "student", args.seed, progress)
        print(f"wrote {args.out / 'student'}")
        return
    report = build(args.out, args.seed, check_experts=not args.skip_expert_check)
    for name in ("teacher", "student"):
        for domain, acc in report[name]["accuracy"].items():
            print(f"{name:<8} {domain:<8} " + "  ".join(f"{k} {v:6.1%}" for k, v in acc.items()))
    for domain, scores in report.get("expert_check", {}).get("experts", {}).items():
        own = scores[domain]
        others = ", ".join(
            f"{d} {s['before']:.0%}->{s['after']:.0%}" for d, s in scores.items() if d != domain
        )
        print(f"expert {domain:<8} own domain {own['before']:.1%} -> {own['after']:.1%}  (others: {others})")
    print(f"wrote {args.out} in {report['build_seconds']} s")


if __name__ == "__main__":
    main()
