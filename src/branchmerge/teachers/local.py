"""Batched sampling from a local transformers checkpoint, with per-request temperature, top-p and seed.

`transformers.generate` applies one temperature and one RNG to a whole batch; a server that batches requests
from different clients needs each row to keep its own settings and its own seeded generator, so this loop
samples row by row over a shared KV cache.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

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
        gens = []
        for sp in params:
            g = torch.Generator()
            g.manual_seed(sp.seed if sp.seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
            gens.append(g)
        max_new = max(p.max_tokens for p in params)
        out: list[list[int]] = [[] for _ in range(b)]
        done = [False] * b
        reasons = ["length"] * b
        past = None
        cur = input_ids.to(self.device)
        attention = attention.to(self.device)
        for _step in range(max_new):
            position_ids = (attention.cumsum(-1) - 1).clamp(min=0)[:, -cur.shape[1] :]
            res = self.model(
                input_ids=cur,
                attention_mask=attention,
                position_ids=position_ids,
                past_key_values=past,
                use_cache=True,
            )
            past = res.past_key_values
            logits = res.logits[:, -1, :].float().cpu()
            nxt = torch.full((b,), pad, dtype=torch.long)
            for i in range(b):
                if done[i]:
                    continue
                tok = _sample_row(logits[i], params[i], gens[i])
                nxt[i] = tok
                if tok in self.stop_ids:
                    done[i], reasons[i] = True, "stop"
                else:
                    out[i].append(tok)
                    if len(out[i]) >= params[i].max_tokens:
                        done[i] = True
            if all(done):
                break
            cur = nxt.unsqueeze(1).to(self.device)
            attention = torch.cat(
                [attention, torch.ones((b, 1), dtype=attention.dtype, device=self.device)], dim=1
            )
        return out, reasons


def _sample_row(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator) -> int:
    if p.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / p.temperature, dim=-1)
    if p.top_p < 1.0:
        sorted_p, idx = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < p.top_p  # smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))
