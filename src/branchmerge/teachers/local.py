"""Batched sampling from a local transformers checkpoint, with per-request temperature, top-p and seed.

`transformers.generate` applies one temperature and one RNG to a whole batch; a server that batches requests
from different clients needs each row to keep its own settings and its own seeded generator, so this loop
decodes the rows over a shared KV cache and draws each sampled row's token from that row's generator (greedy
rows take the batch's argmax at once). A request's tokens therefore depend on its own seed, not on its batch
mates. A row that has finished (a stop token, or its `max_tokens`) leaves the batch and the cache at once, so the
steps after it cost only the rows still decoding.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedTokenizerBase

from branchmerge.errors import BranchmergeError
from branchmerge.teachers.thinking import split_reasoning


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    reasoning: str
    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


def check_model_dir(model_dir: str | Path) -> Path:
    """A folder with config.json and safetensors weights, or one clear error naming it."""
    path = Path(model_dir)
    if not path.is_dir():
        raise BranchmergeError(f"{path}: model folder not found")
    if not (path / "config.json").exists():
        raise BranchmergeError(f"{path}: no config.json (not a transformers checkpoint)")
    if not any(path.glob("*.safetensors")):
        raise BranchmergeError(f"{path}: no *.safetensors weights in the model folder")
    return path


class LocalModel:
    """A causal LM and its tokenizer, ready for batched chat completion."""

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        path = check_model_dir(model_dir)
        self.path = path
        self.name = path.name
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.model = model.to(device).eval()  # type: ignore[arg-type]  # transformers' stub for .to is wrong
        self.device = device
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.stop_ids = {i for i in eos if i is not None}
        self._lock = threading.Lock()  # one forward pass at a time per model
        # transformers renamed the forward's `past_key_values` to `cache` (5.x); pass whichever this one takes.
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        ids: Any = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    def complete(self, requests: list[tuple[list[dict[str, str]], SamplingParams]]) -> list[Completion]:
        """Complete every (messages, params) pair in one batch."""
        prompts = [self.prompt_ids(m) for m, _ in requests]
        with self._lock:
            token_lists, reasons = self._sample([p for _, p in requests], prompts)
        out = []
        for prompt, toks, reason in zip(prompts, token_lists, reasons, strict=True):
            text = cast(str, self.tokenizer.decode(toks, skip_special_tokens=True))
            reasoning, content, closed = split_reasoning(text)
            out.append(Completion(text, reasoning, content, len(prompt), len(toks), reason))
        return out

    @torch.inference_mode()
    def _sample(
        self, params: list[SamplingParams], prompts: list[list[int]]
    ) -> tuple[list[list[int]], list[str]]:
        b = len(prompts)
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((b, width), pad, dtype=torch.long)
        attention = torch.zeros((b, width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding
            input_ids[i, width - len(p) :] = torch.tensor(p)
            attention[i, width - len(p) :] = 1
        gens = [_generator(sp) if sp.temperature > 0 else None for sp in params]
        out: list[list[int]] = [[] for _ in range(b)]
        reasons = ["length"] * b
        live = list(range(b))  # the original index of each row still in the batch
        cache = DynamicCache(config=self.model.config)
        cur = input_ids.to(self.device)
        attention = attention.to(self.device)
        for _step in range(max(p.max_tokens for p in params)):
            position_ids = (attention.cumsum(-1) - 1).clamp(min=0)[:, -cur.shape[1] :]
            logits = self.model(
                input_ids=cur,
                attention_mask=attention,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_arg: cache},
            ).logits[:, -1, :]
            toks = _next_tokens(logits.float().cpu(), [params[i] for i in live], [gens[i] for i in live])
            keep = []
            for j, i in enumerate(live):
                tok = toks[j]
                if tok in self.stop_ids:
                    reasons[i] = "stop"
                    continue
                out[i].append(tok)
                if len(out[i]) < params[i].max_tokens:
                    keep.append(j)
            if not keep:
                break
            nxt = torch.tensor(toks, dtype=torch.long)
            if len(keep) < len(live):  # finished rows leave the batch and the cache
                rows = torch.tensor(keep, dtype=torch.long)
                on_device = rows.to(self.device)
                cache.batch_select_indices(on_device)
                attention = attention[on_device]
                nxt = nxt[rows]
                live = [live[j] for j in keep]
            cur = nxt.unsqueeze(1).to(self.device)
            attention = torch.cat(
                [attention, torch.ones((len(live), 1), dtype=attention.dtype, device=self.device)], dim=1
            )
        return out, reasons


def _generator(p: SamplingParams) -> torch.Generator:
    """The row's own random stream: its draws depend on its seed only, never on its batch mates."""
    g = torch.Generator()
    g.manual_seed(p.seed if p.seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    return g


def _next_tokens(
    logits: torch.Tensor, params: list[SamplingParams], gens: list[torch.Generator | None]
) -> list[int]:
    """One token per row: greedy rows take their argmax, sampled rows a draw from their own generator; the
    arithmetic runs on the whole batch at once."""
    toks = logits.argmax(-1)
    rows = [j for j, g in enumerate(gens) if g is not None]
    if rows:
        picked = torch.tensor(rows)
        sampled = [params[j] for j in rows]
        drawn = _sample_rows(logits[picked], sampled, [cast(torch.Generator, gens[j]) for j in rows])
        toks[picked] = drawn
    return [int(t) for t in toks.tolist()]


def _sample_rows(
    logits: torch.Tensor, params: list[SamplingParams], gens: list[torch.Generator]
) -> torch.Tensor:
    """Temperature, then top-p (the smallest set of tokens whose mass reaches top_p), then one draw per row.

    The draw is `torch.multinomial`'s own for one sample (argmax of p / q with q ~ Exp(1), drawn from the row's
    generator), written out so that everything but drawing q runs on all rows together; a row's token is the one
    `torch.multinomial(p, 1, generator=g)` gives for that row alone.
    """
    temperature = torch.tensor([[p.temperature] for p in params], dtype=logits.dtype)
    probs = torch.softmax(logits / temperature, dim=-1)
    top_p = torch.tensor([[p.top_p] for p in params], dtype=probs.dtype)
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    keep = (sorted_p.cumsum(-1) - sorted_p < top_p) | (top_p >= 1.0)
    probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p * keep)
    q = torch.stack(
        [torch.empty(probs.shape[-1], dtype=probs.dtype).exponential_(1, generator=g) for g in gens]
    )
    return (probs / q).argmax(-1)
