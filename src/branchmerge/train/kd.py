"""Logit-level knowledge distillation from a local teacher that shares the student's tokenizer.

The student learns the teacher's next-token distribution on the assistant tokens of SFT examples (the same
tokens SFT trains on), either **online** (teacher forward each step, eval mode, no grad) or from a **cache** of the
teacher's top-k log-probs (`kd_cache.py`: run the teacher once, train many times). Loss per step:

    L = ce_weight · CE + kd_weight · KD

with BOTH terms averaged over the batch's assistant tokens (nats per token) and both logged every step as `ce` and
`kd` — DistillKit/EasyDistill users found KD summed over a vocabulary or a batch next to a per-token CE, 100–1000x
apart, so that the mixing weight did nothing.

This is off-policy (word-level) KD on fixed text (Hinton et al. 2015; Kim & Rush 2016). On-policy distillation, where
the student generates and the teacher scores the student's own samples (GKD, Agarwal et al. 2024, `lmbda` > 0), is
TRL's `DistillationTrainer` (or `trl.experimental.gkd.GKDTrainer`): use it when exposure bias matters more than
cost — it generates every step, which the tinylab CPU budget cannot afford, so it is not wrapped here.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from branchmerge.errors import BranchmergeError
from branchmerge.records import SFTExample
from branchmerge.train.kd_cache import (
    CacheReport,
    TeacherCache,
    cache_teacher_logits,
    load_teacher,
    tokenize_example,
    tokenize_examples,
    tokenizer_fingerprint,
    training_template,
)
from branchmerge.train.sft import TrainResult
from branchmerge.train.trl_run import (
    RichProgress,
    RunSettings,
    begin_run,
    run_output,
    run_trainer,
    save_full,
    trainer_args,
)

KDKind = Literal["forward", "reverse", "mix"]


@dataclass(frozen=True)
class TopK:
    """A truncated teacher: its k best token ids [..., k] and their log-probs [..., k] at temperature 1."""

    ids: torch.Tensor
    logprobs: torch.Tensor


def kd_loss(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TopK,
    mask: torch.Tensor,
    kind: KDKind = "forward",
    mix_weight: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean KL per selected token. `student_logits` [..., V]; `teacher` full logits [..., V] or a `TopK`
    [..., k]; `mask` [...] bool selects the positions that count (those predicting assistant tokens).

    With τ = temperature, q = softmax(z_S / τ) and p = softmax(z_T / τ), per position:

        forward   KL(p‖q) = Σ_v p_v (log p_v − log q_v)                                (1)
        reverse   KL(q‖p) = Σ_v q_v (log q_v − log p_v)                                (2)
        mix       α·(1) + (1 − α)·(2),  α = mix_weight                                  (3)

    and the loss is τ² · mean over positions (Hinton et al. 2015: τ² keeps gradient sizes independent of τ).

    Top-k teacher (S = its k ids, ℓ = cached log-probs): the teacher is truncated to S and renormalised,
    p̃_i = softmax_S(ℓ / τ)_i — exact for any τ, since softmax(z/τ) restricted to S and renormalised depends on
    z only through ℓ_i − ℓ_j. The approximation is dropping the teacher's tail mass outside S (small for k ≈ 20
    on confident teachers; nothing is learned about the ranking inside the tail).

        forward   Σ_{i∈S} p̃_i (log p̃_i − log q_i)          q over the FULL vocabulary:      (1')
                  exactly KL(p̃‖q), so student mass outside S is pushed back onto S.
        reverse   Σ_{i∈S} q̃_i (log q̃_i − log p̃_i),  q̃ = q restricted to S, renormalised  (2')
                  KL(q‖p̃) is infinite whenever q leaves S, so reverse KL is taken on the same support;
                  the student's mass outside S is then left to the forward and CE terms.

    With k = V both reduce to (1) and (2).
    """
    tau = temperature
    log_q = torch.log_softmax(student_logits[mask].float() / tau, dim=-1)  # [N, V]
    if isinstance(teacher, TopK):
        log_p = torch.log_softmax(teacher.logprobs[mask].float() / tau, dim=-1)  # p̃ on S, [N, k]
        log_q_s = log_q.gather(-1, teacher.ids[mask].long())  # log q_i, i ∈ S
        log_q_rev = log_q_s - torch.logsumexp(log_q_s, dim=-1, keepdim=True)  # log q̃
        log_q_fwd = log_q_s
    else:
        log_p = torch.log_softmax(teacher[mask].float() / tau, dim=-1)
        log_q_fwd = log_q_rev = log_q
    per_token = torch.zeros(log_q.shape[0], device=log_q.device)
    alpha = {"forward": 1.0, "reverse": 0.0, "mix": mix_weight}[kind]
    if alpha > 0:
        per_token = per_token + alpha * (log_p.exp() * (log_p - log_q_fwd)).sum(-1)  # (1), (1')
    if alpha < 1:
        per_token = per_token + (1 - alpha) * (log_q_rev.exp() * (log_q_rev - log_p)).sum(-1)  # (2), (2')
    return tau**2 * per_token.sum() / max(1, per_token.shape[0])


class KDSettings(RunSettings):
    max_length: int = Field(4096, gt=0)  # sized for reasoning traces, like SFT
    kd_loss: KDKind = "forward"
    mix_weight: float = Field(0.5, ge=0, le=1)  # α of α·forward + (1 − α)·reverse
    temperature: float = Field(1.0, gt=0)
    kd_weight: float = Field(0.5, ge=0)
    ce_weight: float = Field(0.5, ge=0)
    top_k: int = Field(20, gt=0)  # cache only: 120 bytes per assistant token at 20
    cache_batch_size: int = Field(8, gt=0)

    @model_validator(mode="after")
    def _mix_weight_only_with_mix(self) -> KDSettings:
        if "mix_weight" in self.model_fields_set and self.kd_loss != "mix":
            raise ValueError(f"mix_weight: read only with kd_loss mix, not {self.kd_loss}")
        return self


@dataclass(frozen=True, kw_only=True)
class KDResult(TrainResult):
    mode: str  # "online" or "cache"
    first_ce: float
    final_ce: float
    first_kd: float
    final_kd: float
    cache: CacheReport | None  # when this call filled the cache
    history: dict[str, list[float]]  # "loss", "ce", "kd": one value per optimizer step


class _Rows(torch.utils.data.Dataset[dict[str, Any]]):
    """Examples tokenized on access: the trainer shuffles these, and each row carries its own cache key."""

    def __init__(
        self, examples: list[SFTExample], tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> None:
        self.examples, self.tokenizer, self.max_length = examples, tokenizer, max_length
        self.template = training_template(tokenizer)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        t = tokenize_example(self.tokenizer, self.examples[i].messages, self.max_length, self.template)
        return {"input_ids": t.input_ids, "select": t.select, "key": t.key}


class KDCollator:
    """Right-pads a batch; with a cache, places each example's teacher rows at its selected positions."""

    def __init__(self, pad_id: int, cache: TeacherCache | None) -> None:
        self.pad_id, self.cache = pad_id, cache

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        b, width = len(rows), max(len(r["input_ids"]) for r in rows)
        out = {
            "input_ids": torch.full((b, width), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros((b, width), dtype=torch.long),
            "select": torch.zeros((b, width), dtype=torch.bool),
        }
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            out["input_ids"][i, :n] = torch.tensor(r["input_ids"])
            out["attention_mask"][i, :n] = 1
            out["select"][i, :n] = torch.tensor(r["select"])
        if self.cache is not None:
            k = self.cache.k
            out["teacher_ids"] = torch.zeros((b, width, k), dtype=torch.long)
            out["teacher_logprobs"] = torch.zeros((b, width, k), dtype=torch.float32)
            for i, r in enumerate(rows):
                ids, logprobs = self.cache[r["key"]]
                sel = out["select"][i]
                out["teacher_ids"][i, sel] = ids.long()
                out["teacher_logprobs"][i, sel] = logprobs.float()
        return out


class KDTrainer(Trainer):
    """`Trainer` whose loss is ce_weight·CE + kd_weight·KD, both per assistant token; logs `ce` and `kd`."""

    def __init__(
        self, *args: Any, settings: KDSettings, n_vocab: int, teacher: Any = None, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.kd, self.n_vocab, self.teacher = settings, n_vocab, teacher
        self.loss_is_scaled_for_ga = False  # our loss is a per-batch mean: let Trainer divide by GA steps
        self._kd_logs: dict[str, list[float]] = defaultdict(list)

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        select = inputs["select"]  # [B, T]: logits at t predict assistant token t+1
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits = outputs.logits  # [B, T, V]
        targets = inputs["input_ids"].roll(-1, dims=1)[select]
        ce = F.cross_entropy(logits[select].float(), targets)  # mean over assistant tokens
        teacher: torch.Tensor | TopK
        if self.teacher is not None:
            with torch.no_grad():
                t_out = self.teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            teacher = t_out.logits[..., : self.n_vocab]
        else:
            teacher = TopK(inputs["teacher_ids"], inputs["teacher_logprobs"])
        s = self.kd
        kd = kd_loss(logits[..., : self.n_vocab], teacher, select, s.kd_loss, s.mix_weight, s.temperature)
        loss = s.ce_weight * ce + s.kd_weight * kd
        self._kd_logs["ce"].append(ce.item())
        self._kd_logs["kd"].append(kd.item())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for key, values in self._kd_logs.items():
            if values:
                logs[key] = sum(values) / len(values)
        self._kd_logs.clear()
        super().log(logs, start_time)


def _open_cache(
    cache_dir: Path, examples: list[SFTExample], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> TeacherCache:
    cache = TeacherCache(cache_dir)
    if cache.tokenizer != tokenizer_fingerprint(tokenizer) or cache.vocab_size != len(tokenizer):
        raise BranchmergeError(
            f"{cache_dir}: the cache was built with another tokenizer than the student's; logit KD needs one "
            "shared tokenizer"
        )
    missing = sum(t.key not in cache for t in tokenize_examples(examples, tokenizer, max_length))
    if missing:
        raise BranchmergeError(
            f"{cache_dir}: {missing} of {len(examples)} examples are not cached (with this tokenizer and "
            f"max_length={max_length}); pass the teacher folder too to fill the cache first"
        )
    return cache


def train_kd(
    examples: list[SFTExample],
    student_dir: str | Path,
    out_dir: str | Path,
    settings: KDSettings | None = None,
    teacher_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    *,
    label: str = "kd",
    show_progress: bool = True,
) -> KDResult:
    """Distil into `student_dir` and save full weights + tokenizer to `out_dir` (atomically).

    teacher only: online KD with full teacher logits. cache only: KD from a cache that already holds every
    example. Both: fill the cache (skipping what it holds), then train from it.
    """
    s = settings or KDSettings()
    if teacher_dir is None and cache_dir is None:
        raise BranchmergeError(f"{label}: KD needs a teacher folder, a KD cache folder, or both")
    student, start = begin_run(student_dir, examples, label, "SFT examples to distil on")
    tokenizer = AutoTokenizer.from_pretrained(student)
    tokenizer.padding_side = "right"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = teacher = cache = None
    if cache_dir is not None:
        if teacher_dir is not None:
            report = cache_teacher_logits(
                examples, teacher_dir, cache_dir, tokenizer, s.top_k, s.max_length, s.cache_batch_size
            )
        cache = _open_cache(Path(cache_dir), examples, tokenizer, s.max_length)
    else:
        assert teacher_dir is not None
        teacher = load_teacher(teacher_dir, tokenizer, str(student), device)
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    progress = RichProgress(label, show_progress)
    out_dir = Path(out_dir)
    with run_output(out_dir) as tmp:
        args = TrainingArguments(
            **{**trainer_args(s, tmp / "_trainer"), "logging_steps": 1}, remove_unused_columns=False
        )
        trainer = KDTrainer(
            model=model,
            args=args,
            train_dataset=_Rows(examples, tokenizer, s.max_length),
            data_collator=KDCollator(pad_id, cache),
            callbacks=[progress],
            settings=s,
            n_vocab=len(tokenizer),
            teacher=teacher,
        )
        run_trainer(trainer)
        save_full(trainer.model, student, tmp)
    first_loss, final_loss = progress.first_last("loss")
    first_ce, final_ce = progress.first_last("ce")
    first_kd, final_kd = progress.first_last("kd")
    return KDResult(
        out_dir=out_dir,
        steps=s.max_steps,
        first_loss=first_loss,
        final_loss=final_loss,
        seconds=time.perf_counter() - start,
        examples=len(examples),
        train_tokens=sum(e.num_tokens for e in examples),
        mode="cache" if cache is not None else "online",
        first_ce=first_ce,
        final_ce=final_ce,
        first_kd=first_kd,
        final_kd=final_kd,
        cache=report,
        history={key: progress.series(key) for key in ("loss", "ce", "kd")},
    )
