"""Random Qwen3 checkpoints for the merge benchmarks, written shard by shard without building a model.

Tensor names and shapes come from transformers itself (a Qwen3ForCausalLM on the meta device, which allocates
nothing), shards are planned by huggingface_hub's `split_torch_state_dict_into_shards` (what `save_pretrained`
uses), so the folders look exactly like `save_pretrained(max_shard_size=...)` output: `model.safetensors` or
`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`, bf16, tied embeddings without `lm_head`.

Weights are random but shaped like a fine-tuning family: every tensor of the base is drawn from its own
generator (seeded by model seed and tensor name), and an expert is base + `delta` * noise, so task vectors are
small next to the weights (as after SFT) and SLERP sits in its spherical regime (cos ~ 0.995), not the lerp
fallback. Norm weights are 1 + noise, as trained RMSNorm scales are. Memory: one shard at a time.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM

# hidden, layers, intermediate, heads, kv_heads, head_dim, vocab. "0.5b" is Qwen3-0.6B's shape (0.6B parameters,
# ~0.44B without the embedding), "1.7b" Qwen3-1.7B's; "0.1b" keeps the full vocabulary so the largest tensor is
# the same kind.
SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden=256, layers=4, intermediate=768, heads=4, kv_heads=2, head_dim=64, vocab=8192),
    "0.1b": dict(hidden=512, layers=12, intermediate=1536, heads=8, kv_heads=4, head_dim=64, vocab=151936),
    "0.5b": dict(hidden=1024, layers=28, intermediate=3072, heads=16, kv_heads=8, head_dim=128, vocab=151936),
    "1.7b": dict(hidden=2048, layers=28, intermediate=6144, heads=16, kv_heads=8, head_dim=128, vocab=151936),
}
WEIGHT_STD = 0.02


def qwen3_config(shape: dict[str, int], tied: bool = True) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        head_dim=shape["head_dim"],
        max_position_embeddings=4096,
        tie_word_embeddings=tied,
        dtype="bfloat16",
        architectures=["Qwen3ForCausalLM"],  # mergekit picks its architecture table from this
    )


def tensor_shapes(config: Qwen3Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every saved tensor, in transformers' state_dict order (no lm_head when tied)."""
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def n_parameters(config: Qwen3Config) -> int:
    total = 0
    for shape in tensor_shapes(config).values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def _draw(name: str, shape: tuple[int, ...], seed: int, std: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.randn(shape, generator=gen) * std


def random_tensor(
    name: str, shape: tuple[int, ...], base_seed: int, seed: int | None, delta: float
) -> torch.Tensor:
    """The base's tensor (seed None) or an expert's: base + delta * std * noise(seed). bf16."""
    is_norm = name.endswith("norm.weight")
    theta = _draw(name, shape, base_seed, WEIGHT_STD) + (1.0 if is_norm else 0.0)
    if seed is not None:
        theta += _draw(name, shape, seed, WEIGHT_STD * delta)
    return theta.to(torch.bfloat16)


def write_checkpoint(
    out_dir: Path,
    config: Qwen3Config,
    base_seed: int = 0,
    seed: int | None = None,
    delta: float = 0.1,
    max_shard_size: str | int = "500MB",
) -> Path:
    """Write config.json and random bf16 weights sharded as save_pretrained would; returns out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out_dir)
    shapes = tensor_shapes(config)
    meta = {n: torch.empty(s, dtype=torch.bfloat16, device="meta") for n, s in shapes.items()}
    split = split_torch_state_dict_into_shards(meta, max_shard_size=max_shard_size)
    for file, names in split.filename_to_tensors.items():
        shard = {n: random_tensor(n, shapes[n], base_seed, seed, delta) for n in names}
        save_file(shard, str(out_dir / file), metadata={"format": "pt"})
        del shard
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out_dir


def write_family(
    root: Path, config: Qwen3Config, n_experts: int, max_shard_size: str | int = "500MB", delta: float = 0.1
) -> tuple[Path, list[Path]]:
    """A base and `n_experts` experts fine-tuned from it: root/base, root/expert1, ..."""
    base = write_checkpoint(root / "base", config, max_shard_size=max_shard_size, delta=delta)
    experts = [
        write_checkpoint(root / f"expert{i}", config, seed=i, delta=delta, max_shard_size=max_shard_size)
        for i in range(1, n_experts + 1)
    ]
    return base, experts


def weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return sorted({model_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
    return [model_dir / "model.safetensors"]


def checkpoint_bytes(model_dir: Path) -> int:
    return sum(f.stat().st_size for f in weight_files(model_dir))
