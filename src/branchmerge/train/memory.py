"""GPU memory a training stage needs, estimated from the model's config before anything is downloaded or loaded.

The shape comes from `config.json` alone: the model is built on PyTorch's meta device (no memory, no weights), so
the parameter count and the split between adaptable Linear layers and the rest are exact for any architecture
transformers knows. What the trainers in this package hold, per parameter, follows from how they load models
(`sft_methods.load_base`): full / LoRA / DoRA keep fp32 weights (bf16 is autocast), QLoRA keeps NF4 Linear layers
(0.5 byte + 1/64 byte of double-quantised scales) and bf16 elsewhere; AdamW holds two fp32 moments per trained
parameter. Activations assume an attention kernel without the seq² score matrix (SDPA / flash), bf16 saved
tensors per token and layer of about 7·hidden + 4·intermediate elements, fp32 logits and their gradient, and with
gradient checkpointing one layer's input per layer plus one layer recomputed. One GiB of CUDA context and 10% for
allocator fragmentation are added. The aim is ±25%: enough to tell 24 GB cards from 80 GB ones, not more
(`benchmarks/gpu_check.py` compares it with a measured QLoRA run of a Qwen3-4B-shaped model on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

GiB = 1024**3
Kind = Literal["full", "lora", "qlora", "dora", "reward", "grpo"]


@dataclass(frozen=True)
class Shape:
    params: int  # every parameter (tied embeddings counted once)
    linear: (
        int  # parameters of Linear layers inside the decoder blocks (what LoRA adapts and QLoRA quantises)
    )
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    kv_dim: int  # key/value heads × head dim
    adapter_per_rank: int  # Σ (in + out) over the Linear layers a LoRA preset adapts: LoRA params = r × this
    tensor_names: tuple[str, ...] = ()  # as a checkpoint names them (tied weights once)


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float  # bytes
    gradients: float
    optimizer: float
    activations: float
    other: float  # KV cache for GRPO generation, reference / reward models
    total: float
    note: str

    def gib(self) -> float:
        return self.total / GiB


def shape_from_config(config: dict[str, Any]) -> Shape:
    """Build the model on the meta device from a config dict and measure it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from branchmerge.train.sft_methods import TARGET_MODULES

    model_type = config.get("model_type")
    if not model_type:
        raise ValueError("config.json has no model_type")
    cfg = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    targets = TARGET_MODULES.get(model_type)
    params = linear = adapter = 0
    names = []
    for name, p in model.named_parameters():
        params += p.numel()
        names.append(name)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}":
            linear += m.weight.numel()
            if targets is None or isinstance(targets, str) or name.rsplit(".", 1)[-1] in targets:
                adapter += m.in_features + m.out_features
    text = getattr(cfg, "text_config", cfg)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv = getattr(text, "num_key_value_heads", None) or heads
    return Shape(
        params=params,
        linear=linear,
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
        vocab=text.vocab_size,
        kv_dim=kv * head_dim,
        adapter_per_rank=adapter,
        tensor_names=tuple(names),
    )


def _activations(s: Shape, tokens: int, checkpointing: bool, logits: bool = True) -> float:
    per_layer = tokens * (7 * s.hidden + 4 * s.intermediate) * 2
    kept = s.layers * tokens * s.hidden * 2 + per_layer if checkpointing else s.layers * per_layer
    return kept + (tokens * s.vocab * 8 if logits else 0)


def estimate(
    s: Shape,
    kind: Kind,
    *,
    batch_size: int,
    seq_len: int,
    checkpointing: bool,
    lora_r: int = 16,
    completion_len: int = 0,
    reference: bool = False,
    scorers: int = 0,
) -> MemoryEstimate:
    """Bytes one GPU needs for one training stage (per device; ZeRO-3/FSDP divide weights and states by GPUs)."""
    tokens = batch_size * seq_len
    other = 0.0
    if kind in ("lora", "dora", "qlora"):
        adapter = lora_r * s.adapter_per_rank + (s.adapter_per_rank // 2 if kind == "dora" else 0)
        if kind == "qlora":
            weights = s.linear * (0.5 + 1 / 64) + (s.params - s.linear) * 2 + adapter * 4
        else:
            weights = (s.params + adapter) * 4
        grads, optim = adapter * 4.0, adapter * 8.0
        note = f"{kind}: r={lora_r}, {adapter / 1e6:.1f}M trained parameters"
    else:
        weights, grads, optim = s.params * 4.0, s.params * 4.0, s.params * 8.0
        note = "full fine-tune, fp32 weights + AdamW"
    logits = kind != "reward"
    acts = _activations(s, tokens, checkpointing, logits)
    if kind == "grpo":
        total_len = seq_len + completion_len
        other += batch_size * total_len * s.layers * 2 * s.kv_dim * 2  # bf16 KV cache while sampling
        acts = _activations(s, batch_size * total_len, checkpointing)
        note += f"; {batch_size} completions of ≤{completion_len} tokens"
    if reference:
        other += s.params * 2
        note += "; bf16 reference model"
    if scorers:
        other += scorers * s.params * 4
        note += f"; {scorers} reward scorer(s) assumed the student's size"
    base = weights + grads + optim + acts + other
    return MemoryEstimate(weights, grads, optim, acts, other, base * 1.1 + GiB, note)
