"""The four SFT methods: how each loads the base, which adapter it trains, and how the result becomes full weights.

- `full`: every weight trains.
- `lora`: low-rank adapters on the attention and MLP projections (Hu et al. 2021, "LoRA").
- `dora`: LoRA whose weight is split into a learned magnitude and a low-rank direction (Liu et al. 2024, "DoRA";
  PEFT `use_dora=True`).
- `qlora`: LoRA on a frozen 4-bit NF4 base with double quantisation and bf16 compute (Dettmers et al. 2023,
  "QLoRA"); needs a CUDA GPU and bitsandbytes.

Adapters are merged into full weights before saving, so `merge` and `serve` read the result directly. A QLoRA
adapter is merged into the base reloaded at its own precision, not into the 4-bit copy it trained against: merging
there would round the update to 4-bit steps and save a checkpoint only bitsandbytes can read.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import AutoModelForCausalLM

from branchmerge.errors import BranchmergeError

if TYPE_CHECKING:
    from peft import LoraConfig

    from branchmerge.train.sft import SFTSettings

log = logging.getLogger(__name__)

Method = Literal["full", "lora", "qlora", "dora"]
AttnImplementation = Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"]

_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
_MLP = ["gate_proj", "up_proj", "down_proj"]
# LoRA targets per `config.model_type`: the attention and MLP projections, as each architecture names them (read off
# the transformers 5 modules). MoE models list attention only: their experts are fused 3-D parameters, not Linear
# layers, so LoRA cannot wrap them.
TARGET_MODULES: dict[str, list[str]] = {
    **dict.fromkeys(
        [
            "qwen2",
            "qwen3",
            "llama",
            "mistral",
            "ministral",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo2",
            "olmo3",
            "granite",
            "smollm3",
            "cohere",
            "exaone4",
        ],
        _ATTENTION + _MLP,
    ),
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "glm4": [*_ATTENTION, "gate_up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "starcoder2": [*_ATTENTION, "c_fc", "c_proj"],
    "deepseek_v3": ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", *_MLP],
    **dict.fromkeys(["qwen3_moe", "mixtral", "gpt_oss", "granitemoe"], _ATTENTION),
}


def lora_targets(model_type: str, override: list[str] | str | None) -> list[str] | str:
    """`override` when given, else the preset for `model_type`, else PEFT's "all-linear" (with the reason logged)."""
    if override is not None:
        return override
    if model_type in TARGET_MODULES:
        return TARGET_MODULES[model_type]
    log.warning(
        "LoRA: no target-module preset for model_type %r (presets: %s); adapting every Linear layer "
        "('all-linear'). Set lora_target_modules to choose.",
        model_type,
        ", ".join(sorted(TARGET_MODULES)),
    )
    return "all-linear"


_FLASH = {  # attention implementation -> (module, how to install it)
    "flash_attention_2": ("flash_attn", "pip install flash-attn"),
    "flash_attention_3": (
        "flash_attn_interface",
        "flash-attn-3, built from the FlashAttention repo's hopper/",
    ),
}


def check_available(s: SFTSettings) -> None:
    """What `s` needs from this machine, checked before any model loads; everything missing in one error."""
    cuda = torch.cuda.is_available()
    missing = []  # "setting: what it needs"
    if s.method == "qlora":
        if not cuda:
            missing.append("method qlora: a CUDA GPU (bitsandbytes' 4-bit kernels)")
        if importlib.util.find_spec("bitsandbytes") is None:
            missing.append("method qlora: pip install bitsandbytes (or pip install 'branchmerge[gpu]')")
    if s.attn_implementation in _FLASH:
        package, install = _FLASH[s.attn_implementation]
        if not cuda:
            missing.append(f"attn_implementation {s.attn_implementation}: a CUDA GPU")
        if importlib.util.find_spec(package) is None:
            missing.append(f"attn_implementation {s.attn_implementation}: {install}")
    if s.use_liger_kernel and importlib.util.find_spec("liger_kernel") is None:
        missing.append("use_liger_kernel: pip install liger-kernel (or pip install 'branchmerge[gpu]')")
    if missing:
        hint = " Method lora or dora trains without them." if s.method == "qlora" else ""
        raise BranchmergeError(
            "this machine lacks what the SFT settings need: " + "; ".join(missing) + "." + hint
        )


def load_base(base: Path, s: SFTSettings) -> Any:
    """The model to train: fp32 master weights (bf16 autocast when `s.bf16`), or a 4-bit NF4 base for QLoRA."""
    kwargs: dict[str, Any] = {}
    if s.attn_implementation is not None:
        kwargs["attn_implementation"] = s.attn_implementation
    if s.method != "qlora":
        return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, **kwargs)

    from accelerate import PartialState
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,  # quantise the quantisation constants too (QLoRA §3)
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        base,
        quantization_config=quantization,
        dtype=torch.bfloat16,
        device_map={"": PartialState().local_process_index},  # one whole copy per process
        **kwargs,
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=s.gradient_checkpointing)


def adapter_config(s: SFTSettings, model_type: str) -> LoraConfig | None:
    """The PEFT config TRL wraps the model with (None for full fine-tuning)."""
    if s.method == "full":
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=s.lora_r,
        lora_alpha=s.lora_alpha,
        lora_dropout=s.lora_dropout,
        target_modules=lora_targets(model_type, s.lora_target_modules),
        use_dora=s.method == "dora",
        task_type="CAUSAL_LM",
    )


def full_weights(trained: Any, base: Path, method: Method, scratch: Path) -> Any:
    """The trained model as plain full weights: adapters merged in, no PEFT wrapper left."""
    if method == "full":
        return trained
    if method != "qlora":
        return trained.merge_and_unload()
    from peft import PeftModel

    adapter = scratch / "adapter"
    trained.save_pretrained(adapter)
    full = AutoModelForCausalLM.from_pretrained(
        base, dtype="auto"
    )  # the base at its own precision, not 4-bit
    return PeftModel.from_pretrained(full, adapter).merge_and_unload()
