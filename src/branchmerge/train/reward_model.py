"""RV and CD reward models (DistilQwen; README, "Shipped recipes": adaptive-thinking): a regressor from a problem and a trace to the
trace's Reasoning Verbosity or Cognitive Difficulty score (0–9), which GRPO turns into the range reward
R_x = −|f_x − clip(f_x, L_x, H_x)| through `load_scorer` and `rewards.range_reward`.

Model: `AutoModelForSequenceClassification` with one output (`problem_type="regression"`, MSE loss) on a causal
base (Qwen3ForSequenceClassification for Qwen3); the head reads the last non-padding token. Labels are score/9, so
the head learns [0, 1]; scores come back as 9·output clipped to [0, 9].

Input layout — training and scoring both go through `reward_text`, and nothing else:

    {question}\\n\\n<think>\\n{reasoning}\\n</think>\\n\\n{answer}

the question, a blank line, then the assistant turn in the Qwen3 thinking layout (`sft_data.assistant_content`).
No chat template is involved, so the layout does not depend on the base's template. Inputs longer than
`max_length` tokens keep their start and are counted as truncated.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from datasets import Dataset
from pydantic import Field
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    set_seed,
)

from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, Trace, atomic_write_text
from branchmerge.teachers.local import check_model_dir
from branchmerge.teachers.thinking import split_reasoning
from branchmerge.train.rewards import Scorer, completion_text
from branchmerge.train.sft_data import assistant_content
from branchmerge.train.trl_run import (
    RichProgress,
    RunSettings,
    quiet_transformers,
    run_output,
    run_trainer,
    save_full,
    trainer_args,
)

Target = Literal["rv", "cd"]
MAX_SCORE = 9.0
METRICS_FILE = "reward_metrics.json"


class RewardModelSettings(RunSettings):
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(8, gt=0)
    max_length: int = Field(4096, gt=0)
    heldout: float = Field(0.15, gt=0, lt=1)  # share of scored traces kept out of training (at least one)


@dataclass(frozen=True)
class RewardModelResult:
    out_dir: Path
    target: str
    train: int
    heldout: int
    skipped: int  # traces without the target score: never defaulted
    truncated: int  # inputs cut to max_length
    first_loss: float
    final_loss: float
    mae: float  # held-out mean absolute error, 0–9 scale
    spearman: float | None  # held-out rank correlation; None when either side is constant
    seconds: float


def reward_text(question: str, reasoning: str, answer: str) -> str:
    """The one input layout of RV/CD reward models (module docstring)."""
    return f"{question}\n\n{assistant_content(reasoning, answer)}"


def _scored(
    traces: list[Trace], problems: dict[str, Problem], target: Target
) -> tuple[list[str], list[float], int]:
    """(texts, scores 0–9, skipped): traces without the target score are skipped, never given a default."""
    texts: list[str] = []
    scores: list[float] = []
    for t in traces:
        score = getattr(t, target)
        if score is None:
            continue
        if t.problem_id not in problems:
            raise BranchmergeError(f"trace {t.key}: problem '{t.problem_id}' is not among the problems")
        texts.append(reward_text(problems[t.problem_id].question, t.reasoning, t.answer))
        scores.append(float(score))
    return texts, scores, len(traces) - len(texts)


def _split(n: int, heldout: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train / held-out indices; at least one item on each side."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(n - 1, max(1, round(heldout * n)))
    return sorted(order[k:]), sorted(order[:k])


def _encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[list[int]]:
    return [ids[:max_length] for ids in tokenizer(list(texts))["input_ids"]]


@torch.no_grad()
def _predict(
    model: Any, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> list[float]:
    """Scores on the 0–9 scale, 16 inputs per forward pass."""
    model.eval()
    out: list[float] = []
    for i in range(0, len(texts), 16):
        ids = _encode(tokenizer, texts[i : i + 16], max_length)
        batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(model.device)
        out.extend((MAX_SCORE * model(**batch).logits[:, 0]).clamp(0, MAX_SCORE).tolist())
    return out


def _load(model_dir: Path, **kwargs: Any) -> tuple[Any, PreTrainedTokenizerBase]:
    quiet_transformers()  # a new score head is reported as missing weights: expected, not news
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # positions 0..n-1 whatever the batch: scores do not depend on it
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32, **kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head finds the last token by skipping padding
    return model, tokenizer


def train_reward_model(
    traces: list[Trace],
    problems: dict[str, Problem],
    base_dir: str | Path,
    out_dir: str | Path,
    target: Target = "rv",
    settings: RewardModelSettings | None = None,
    *,
    label: str = "reward",
    show_progress: bool = True,
) -> RewardModelResult:
    """Train a `target` regressor on the scored traces; save it, its tokenizer and `reward_metrics.json`
    (held-out MAE and Spearman, counts, losses) to `out_dir` atomically."""
    s = settings or RewardModelSettings()
    base = check_model_dir(base_dir)
    texts, scores, skipped = _scored(traces, problems, target)
    if len(texts) < 2:
        raise BranchmergeError(f"{label}: {len(texts)} traces carry a '{target}' score; need at least 2")
    start = time.perf_counter()
    train_idx, held_idx = _split(len(texts), s.heldout, s.seed)
    set_seed(s.seed)  # the new score head is drawn before the Trainer seeds anything
    model, tokenizer = _load(base, num_labels=1, problem_type="regression")
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    dataset = Dataset.from_dict(
        {
            "input_ids": _encode(tokenizer, [texts[i] for i in train_idx], s.max_length),
            "labels": [scores[i] / MAX_SCORE for i in train_idx],
        }
    )
    out_dir = Path(out_dir)
    progress = RichProgress(label, show_progress)
    with run_output(out_dir) as tmp:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**trainer_args(s, tmp / "_trainer")),
            train_dataset=dataset,
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
            callbacks=[progress],
        )
        run_trainer(trainer)
        predicted = _predict(model, tokenizer, [texts[i] for i in held_idx], s.max_length)
        mae, rho = _heldout_metrics(predicted, [scores[i] for i in held_idx])
        result = RewardModelResult(
            out_dir=out_dir,
            target=target,
            train=len(train_idx),
            heldout=len(held_idx),
            skipped=skipped,
            truncated=sum(n > s.max_length for n in lengths),
            first_loss=progress.first_last("loss")[0],
            final_loss=progress.first_last("loss")[1],
            mae=mae,
            spearman=rho,
            seconds=time.perf_counter() - start,
        )
        save_full(model, base, tmp)
        metrics = {**asdict(result), "out_dir": str(out_dir), "max_length": s.max_length}
        atomic_write_text(tmp / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    return result


def _heldout_metrics(predicted: list[float], truth: list[float]) -> tuple[float, float | None]:
    """(MAE on the 0–9 scale, Spearman ρ or None where it is undefined: one item, or a constant side)."""
    from scipy.stats import spearmanr

    mae = sum(abs(p - y) for p, y in zip(predicted, truth, strict=True)) / len(truth)
    if len(truth) < 2 or len(set(predicted)) < 2 or len(set(truth)) < 2:
        return mae, None
    return mae, float(spearmanr(predicted, truth).statistic)


def _question(prompt: Any) -> str:
    """The question in a GRPO prompt: a string, or the last user message of a conversation."""
    if prompt is None or isinstance(prompt, str):
        return prompt or ""
    users = [m for m in prompt if m.get("role") == "user"]
    return str(users[-1].get("content") or "") if users else ""


def load_scorer(model_dir: str | Path) -> Scorer:
    """A `Scorer` for `rewards.range_reward`: (prompts, completions) -> 0–9 scores from a model trained by
    `train_reward_model`, the completions re-laid out by `reward_text`."""
    path = check_model_dir(model_dir)
    if not (path / METRICS_FILE).is_file():
        raise BranchmergeError(f"{path}: no {METRICS_FILE}; not a reward model from `train reward`")
    max_length = int(json.loads((path / METRICS_FILE).read_text())["max_length"])
    model, tokenizer = _load(path)
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # beside the policy GRPO is training

    def score(prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
        texts = []
        for prompt, completion in zip(prompts, completions, strict=True):
            reasoning, answer, _ = split_reasoning(completion_text(completion))
            texts.append(reward_text(_question(prompt), reasoning, answer))
        return _predict(model, tokenizer, texts, max_length)

    return score
