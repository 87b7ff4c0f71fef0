"""The teacher side of logit KD: tokenizing chat examples with their assistant mask, checking that teacher and
student share a tokenizer, and the on-disk cache of the teacher's top-k log-probs (run the teacher once, train
from the cache many times — Axolotl's KD plugin has this; TRL does not).

Cache layout (`cache_dir/`):

    index.json                 {"format", "k", "vocab_size", "teacher", "tokenizer",
                                "shards": [name, ...], "examples": {key: [shard, offset, rows]}}
    shard-00000.safetensors    "ids"      int32   [rows, k]   teacher's top-k token ids, best first
                               "logprobs" float16 [rows, k]   their log-probs at temperature 1 (full vocabulary)

Size: k·(4 + 2) bytes per assistant token — k=20: 20·6 = 120 bytes/token (DistillKit compresses to 100–300), so a
4096-token trace costs 480 KiB, and 100k such traces 48 GiB; plus a safetensors header per shard and one index
entry (~60 bytes) per example.

Rows are the positions whose logits *predict* an assistant token (position t when token t+1 is an assistant
token), in order. An example's key is a content hash of its token ids and assistant mask after truncation to
`max_length` — never a step or an index — so any shuffling, subsetting or reordering of the examples reads the
right rows, and a changed template, tokenizer or `max_length` is a cache miss instead of a silent misalignment.

Every shard is written to a temporary file and renamed, then the index is rewritten atomically; an interrupted
run loses at most the shard it was filling, and a rerun skips every example already in the index. Writing holds
one shard's rows in memory (`shard_tokens`); reading opens shards memory-mapped and slices one example at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from branchmerge.errors import BranchmergeError
from branchmerge.records import SFTExample, atomic_write_text
from branchmerge.teachers.local import check_model_dir
from branchmerge.train.trl_run import quiet_transformers

FORMAT = "branchmerge-kd-cache/1"
INDEX = "index.json"
ID_BYTES, LOGPROB_BYTES = 4, 2  # int32 ids, fp16 log-probs
LOGPROB_FLOOR = -1e4  # fp16-safe stand-in for log 0, so 0·log 0 stays 0 in the loss
_SAMPLE_TEXT = "<|im_start|>user\nWhat is 12 + 345?<|im_end|>\n<think>\nx = 3·4 — café, 東京</think>\n\n357"


def bytes_per_token(k: int) -> int:
    """Payload of one cached assistant token: k int32 ids + k fp16 log-probs."""
    return k * (ID_BYTES + LOGPROB_BYTES)


# ---------------------------------------------------------------- tokenization ---------------------------------


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    select: list[bool]  # select[t]: the logits at t predict an assistant token (token t+1)
    key: str  # content hash of (input_ids, assistant mask)

    @property
    def rows(self) -> int:
        return sum(self.select)


def training_template(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The chat template to tokenize with: the tokenizer's own when it has `{% generation %}` markers, else TRL's
    patched copy for templates it knows (Qwen3 and others) — the same choice TRL's SFTTrainer makes for
    `assistant_only_loss`, so KD and SFT train on the same tokens."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise BranchmergeError(
            "the student's tokenizer has no chat template: KD needs one to find assistant turns"
        )
    if has_generation_markers(template):
        return None
    try:
        patched = get_training_chat_template(tokenizer)
    except Exception as e:  # TRL raises for templates it does not recognise
        raise BranchmergeError(
            f"the student's chat template has no {{% generation %}} markers and TRL cannot patch it ({e}); "
            "add the markers around the assistant turn"
        ) from e
    return patched


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    max_length: int,
    chat_template: str | None = None,
) -> Tokenized:
    out: Any = tokenizer.apply_chat_template(
        messages,
        chat_template=chat_template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids = list(out["input_ids"][:max_length])
    mask = [bool(m) for m in out["assistant_masks"][:max_length]]
    digest = hashlib.sha256(json.dumps([ids, mask], separators=(",", ":")).encode()).hexdigest()
    return Tokenized(input_ids=ids, select=mask[1:] + [False], key=digest[:32])


def tokenize_examples(
    examples: Sequence[SFTExample], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> Iterator[Tokenized]:
    """One `Tokenized` per example, in order; an example with no assistant token inside `max_length` is an error
    (training on it would be an empty mask)."""
    template = training_template(tokenizer)
    for i, ex in enumerate(examples):
        tok = tokenize_example(tokenizer, ex.messages, max_length, template)
        if not tok.rows:
            raise BranchmergeError(
                f"example {i} (problem {ex.problem_id}): no assistant tokens within max_length={max_length}; "
                "raise max_length or drop the example"
            )
        yield tok


# ---------------------------------------------------------------- teacher -------------------------------------


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    ids = tokenizer(_SAMPLE_TEXT, add_special_tokens=False)["input_ids"]
    return hashlib.sha256(json.dumps([len(tokenizer), ids]).encode()).hexdigest()[:16]


def check_same_tokenizer(
    teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase, teacher_name: str, student_name: str
) -> None:
    """Logit KD compares distributions id by id: the two vocabularies must be the same list."""
    if len(teacher) != len(student):
        raise BranchmergeError(
            f"teacher {teacher_name} has {len(teacher)} tokens, student {student_name} has {len(student)}: "
            "logit KD needs one shared tokenizer (use trace SFT for teachers of another family)"
        )
    t_ids = teacher(_SAMPLE_TEXT, add_special_tokens=False)["input_ids"]
    s_ids = student(_SAMPLE_TEXT, add_special_tokens=False)["input_ids"]
    if t_ids != s_ids:
        raise BranchmergeError(
            f"teacher {teacher_name} and student {student_name} tokenize the same text differently "
            f"({t_ids[:8]}… vs {s_ids[:8]}…): logit KD needs one shared tokenizer"
        )


def load_teacher(
    teacher_dir: str | Path, student_tokenizer: PreTrainedTokenizerBase, student_name: str, device: str
) -> Any:
    """The teacher in eval mode without gradients, after checking it shares the student's tokenizer."""
    path = check_model_dir(teacher_dir)
    quiet_transformers()
    check_same_tokenizer(AutoTokenizer.from_pretrained(path), student_tokenizer, str(path), student_name)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device).eval().requires_grad_(False)  # type: ignore[arg-type]


def teacher_fingerprint(teacher_dir: Path) -> str:
    """Cheap identity of a checkpoint: config plus each weight file's size, first and last MiB."""
    h = hashlib.sha256((teacher_dir / "config.json").read_bytes())
    for f in sorted(teacher_dir.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read())
    return h.hexdigest()[:16]


@torch.no_grad()
def teacher_topk(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    select: torch.Tensor,
    k: int,
    n_vocab: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k ids [N, k] and log-probs [N, k] at the N selected positions (row-major: example, then position).

    The LM head runs on the selected hidden states only, 1024 rows at a time, so memory is 1024·V logits instead
    of B·T·V (for a 150k vocabulary, 0.6 GB instead of 20 GB at B=8, T=4096). Log-probs are normalised over the
    tokenizer's vocabulary (`n_vocab`; checkpoints may pad the embedding beyond it).
    """
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[select]
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma-2-style models cap their logits
    ids, logprobs = [], []
    for h in hidden.split(1024):
        logits = head(h).float()[:, :n_vocab]
        if cap:
            logits = cap * torch.tanh(logits / cap)
        top = torch.log_softmax(logits, dim=-1).topk(k, dim=-1)
        ids.append(top.indices.to(torch.int32))
        logprobs.append(top.values.clamp(min=LOGPROB_FLOOR).to(torch.float16))
    return torch.cat(ids), torch.cat(logprobs)


# ---------------------------------------------------------------- cache ---------------------------------------


@dataclass(frozen=True)
class CacheReport:
    cache_dir: Path
    examples: int  # examples asked for
    cached: int  # newly cached in this run
    skipped: int  # already in the cache (or duplicates of an example cached in this run)
    tokens: int  # assistant tokens newly cached
    k: int
    bytes_per_token: int  # payload, k·6
    disk_bytes: int  # all shard files, headers included
    seconds: float


def _new_index(k: int, n_vocab: int, teacher: Path, tok_fp: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "k": k,
        "vocab_size": n_vocab,
        "teacher": {"path": str(teacher), "fingerprint": teacher_fingerprint(teacher)},
        "tokenizer": tok_fp,
        "shards": [],
        "examples": {},
    }


def _read_index(cache_dir: Path) -> dict[str, Any] | None:
    path = cache_dir / INDEX
    if not path.exists():
        return None
    index: dict[str, Any] = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise BranchmergeError(f"{path}: not a branchmerge KD cache (format {index.get('format')!r})")
    return index


def _check_reuse(index: dict[str, Any], new: dict[str, Any], cache_dir: Path) -> None:
    for field in ("k", "vocab_size", "tokenizer"):
        if index[field] != new[field]:
            raise BranchmergeError(
                f"{cache_dir}: cache was built with {field}={index[field]!r}, this run has {new[field]!r}; "
                "use another cache folder"
            )
    if index["teacher"]["fingerprint"] != new["teacher"]["fingerprint"]:
        raise BranchmergeError(
            f"{cache_dir}: cache holds logits of teacher {index['teacher']['path']}, not of "
            f"{new['teacher']['path']} (different weights); use another cache folder"
        )


class _ShardWriter:
    """Buffers rows up to `shard_tokens`, then writes one shard (temp file + rename) and the index (atomic)."""

    def __init__(self, cache_dir: Path, index: dict[str, Any], shard_tokens: int) -> None:
        self.cache_dir, self.index, self.shard_tokens = cache_dir, index, shard_tokens
        self.ids: list[torch.Tensor] = []
        self.logprobs: list[torch.Tensor] = []
        self.entries: dict[str, list[int]] = {}
        self.rows = 0

    def add(self, key: str, ids: torch.Tensor, logprobs: torch.Tensor) -> None:
        self.entries[key] = [len(self.index["shards"]), self.rows, len(ids)]
        self.ids.append(ids)
        self.logprobs.append(logprobs)
        self.rows += len(ids)
        if self.rows >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.entries:
            return
        n = len(self.index["shards"])
        name = f"shard-{n:05d}.safetensors"
        tmp = self.cache_dir / f".{name}.tmp"
        tensors = {"ids": torch.cat(self.ids).contiguous(), "logprobs": torch.cat(self.logprobs).contiguous()}
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
        # The index names this shard only after the rename: a killed run leaves an unindexed file, overwritten next.
        os.replace(tmp, self.cache_dir / name)
        self.index["shards"].append(name)
        self.index["examples"].update(self.entries)
        atomic_write_text(self.cache_dir / INDEX, json.dumps(self.index, separators=(",", ":")))
        self.ids, self.logprobs, self.entries, self.rows = [], [], {}, 0


def cache_teacher_logits(
    examples: Sequence[SFTExample],
    teacher_dir: str | Path,
    cache_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    k: int = 20,
    max_length: int = 4096,
    batch_size: int = 8,
    *,
    shard_tokens: int = 1 << 20,
    device: str | None = None,
) -> CacheReport:
    """Run the teacher once over `examples` (tokenized with the student's `tokenizer`, as training will) and add
    each example's top-k log-probs to `cache_dir`, skipping examples already there. 120 bytes per assistant token
    at k=20 (module docstring); `shard_tokens` rows per shard bound the memory used while writing."""
    start = time.perf_counter()
    teacher_path = check_model_dir(teacher_dir)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    new = _new_index(k, len(tokenizer), teacher_path, tokenizer_fingerprint(tokenizer))
    index = _read_index(cache_dir)
    if index is None:
        index = new
    else:
        _check_reuse(index, new, cache_dir)
    if k > len(tokenizer):
        raise BranchmergeError(f"top-k {k} is larger than the vocabulary ({len(tokenizer)} tokens)")
    model = None
    writer = _ShardWriter(cache_dir, index, shard_tokens)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    skipped = tokens = 0
    batch: list[Tokenized] = []

    def run(batch: list[Tokenized]) -> None:
        nonlocal model
        if model is None:  # only now: a fully cached run never loads the teacher
            model = load_teacher(teacher_path, tokenizer, "(the student's tokenizer)", device)
        width = max(len(t.input_ids) for t in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        select = torch.zeros((len(batch), width), dtype=torch.bool)
        for b, t in enumerate(batch):  # right padding: real positions keep their positions
            ids[b, : len(t.input_ids)] = torch.tensor(t.input_ids)
            attn[b, : len(t.input_ids)] = 1
            select[b, : len(t.select)] = torch.tensor(t.select)
        top_ids, top_lp = teacher_topk(
            model, ids.to(device), attn.to(device), select.to(device), k, len(tokenizer)
        )
        offset = 0
        for t in batch:
            writer.add(t.key, top_ids[offset : offset + t.rows].cpu(), top_lp[offset : offset + t.rows].cpu())
            offset += t.rows

    for tok in tokenize_examples(examples, tokenizer, max_length):
        if tok.key in index["examples"] or tok.key in writer.entries or any(t.key == tok.key for t in batch):
            skipped += 1
            continue
        batch.append(tok)
        tokens += tok.rows
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    writer.flush()
    disk = sum((cache_dir / s).stat().st_size for s in index["shards"])
    return CacheReport(
        cache_dir=cache_dir,
        examples=len(examples),
        cached=len(examples) - skipped,
        skipped=skipped,
        tokens=tokens,
        k=k,
        bytes_per_token=bytes_per_token(k),
        disk_bytes=disk,
        seconds=time.perf_counter() - start,
    )


class TeacherCache:
    """Read side: `cache[key]` -> (ids int32 [rows, k], logprobs fp16 [rows, k]), sliced from a memory-mapped
    shard, so training holds one batch of teacher rows at a time."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)
        index = _read_index(self.cache_dir)
        if index is None:
            raise BranchmergeError(
                f"{self.cache_dir}: no KD cache here (no {INDEX}); fill it with cache_teacher_logits "
                "or pass the teacher folder too"
            )
        self.index = index
        self.k: int = index["k"]
        self.vocab_size: int = index["vocab_size"]
        self.tokenizer: str = index["tokenizer"]
        self._files: dict[int, Any] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.index["examples"]

    def __len__(self) -> int:
        return len(self.index["examples"])

    def __getitem__(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        shard, offset, rows = self.index["examples"][key]
        if shard not in self._files:
            self._files[shard] = safe_open(str(self.cache_dir / self.index["shards"][shard]), framework="pt")
        f = self._files[shard]
        return f.get_slice("ids")[offset : offset + rows], f.get_slice("logprobs")[offset : offset + rows]
