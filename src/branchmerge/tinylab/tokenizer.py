"""A tiny byte-level BPE tokenizer with a Qwen3-style chat template, trained offline in well under a second.

Digits are split one per token (as Qwen's pre-tokenizer does), so arithmetic is learnable by a tiny model.
The chat template marks the assistant turn with `{% generation %}` so TRL's `assistant_only_loss` and
`return_assistant_tokens_mask` see exactly the assistant tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from branchmerge.tinylab.domains import DOMAINS, make_item

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]

# Qwen3 layout: reasoning inside <think>...</think>, then the answer. The assistant turn is wrapped in
# generation markers so that the loss mask covers the assistant's content and its <|im_end|>.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- generation -%}{{ message['content'] + '<|im_end|>' }}{%- endgeneration -%}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def _corpus(n_per_domain: int = 300) -> list[str]:
    texts = []
    for domain in DOMAINS:
        for i in range(n_per_domain):
            it = make_item(domain, seed=12345, index=i)
            texts.append(
                f"<|im_start|>user\n{it.question}<|im_end|>\n<|im_start|>assistant\n"
                f"<think>\n{it.solution}\n</think>\n\n{it.answer}<|im_end|>\n"
            )
    return texts


def build_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """Train the tokenizer on tinylab text; deterministic for a given `vocab_size`."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.add_tokens(THINK_TOKENS)  # normal tokens: kept when decoding with skip_special_tokens=True
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # batched generation
    fast.model_max_length = 4096
    return fast


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> None:
    """Save in a layout other tools read too: `tokenizer_class` set to Qwen2Tokenizer, template in the config."""
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(out_dir)
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg["chat_template"] = tokenizer.chat_template
    cfg["padding_side"] = "left"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
