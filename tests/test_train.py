import pytest
import torch
from safetensors.torch import load_file

from branchmerge.errors import BranchmergeError
from branchmerge.records import Problem, Trace
from branchmerge.train import SFTSettings, build_sft_examples, train_sft
from branchmerge.train.sft_data import assistant_content
from sft_fixtures import solved_examples


@pytest.fixture(scope="module")
def add_examples(tokenizer):
    return solved_examples(tokenizer, "add", 48)


def test_build_sft_layout_counts_and_max_length(tokenizer):
    p = Problem(id="p", domain="add", question="What is 2+2?", reference="4")
    ok = Trace(
        problem_id="p",
        teacher="t",
        model="m",
        sample=0,
        temperature=0.6,
        reasoning="2+2=4",
        answer="4",
        verified=True,
    )
    bad = ok.model_copy(update={"sample": 1, "verified": False})
    ex, rep = build_sft_examples([ok, bad], {"p": p}, tokenizer)
    assert rep.unverified == 1 and len(ex) == 1
    assert ex[0].messages[1]["content"] == "<think>\n2+2=4\n</think>\n\n4"
    text = tokenizer.apply_chat_template(ex[0].messages, tokenize=False)
    assert ex[0].num_tokens == len(tokenizer(text)["input_ids"])
    ex, rep = build_sft_examples([ok], {"p": p}, tokenizer, max_length=ex[0].num_tokens - 1)
    assert ex == [] and rep.too_long == 1


def test_assistant_mask_is_exactly_the_assistant_turn(tokenizer):
    """Token by token: the loss mask TRL builds from our template covers the assistant content and <|im_end|>."""
    from datasets import Dataset
    from transformers import Qwen3ForCausalLM
    from trl import SFTConfig, SFTTrainer

    from branchmerge.tinylab.modeling import tiny_qwen3_config

    content = assistant_content("7+5=12, write 2 carry 1", "12")
    messages = [{"role": "user", "content": "What is 7+5?"}, {"role": "assistant", "content": content}]
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == content + "<|im_end|>"
    assert tokenizer.decode([i for i, m in zip(ids, mask) if not m]).startswith(
        "<|im_start|>user\nWhat is 7+5?"
    )

    cfg = SFTConfig(
        output_dir="/tmp/unused", use_cpu=True, bf16=False, assistant_only_loss=True, report_to=[]
    )
    trainer = SFTTrainer(
        model=Qwen3ForCausalLM(tiny_qwen3_config(tokenizer)),
        args=cfg,
        train_dataset=Dataset.from_list([{"messages": messages}]),
        processing_class=tokenizer,
    )
    row = trainer.train_dataset[0]
    assert row["input_ids"] == list(ids)
    assert [int(label != -100) for label in row["labels"]] == list(mask)  # loss only where the mask is 1


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sft_loss_falls_and_saves_a_loadable_full_checkpoint(method, add_examples, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "expert"
    lr = 3e-3 if method == "full" else 1e-2
    r = train_sft(
        add_examples,
        tiny_model_dir,
        out,
        SFTSettings(method=method, max_steps=25, batch_size=8, learning_rate=lr, report_to="none"),
        show_progress=False,
    )
    assert r.final_loss < r.first_loss - 0.3
    assert sorted(f.name for f in tmp_path.iterdir()) == ["expert"]  # no temp folder left behind
    weights = load_file(out / "model.safetensors")
    assert not any("lora" in k for k in weights)  # adapters merged into full weights
    base = load_file(tiny_model_dir / "model.safetensors")
    assert set(weights) == set(base)
    assert any(not torch.equal(weights[k], base[k]) for k in base)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] == len(base["model.embed_tokens.weight"])
    assert (out / "chat_template.jinja").read_text() == (tiny_model_dir / "chat_template.jinja").read_text()


def test_train_without_examples_is_an_error(tiny_model_dir, tmp_path):
    with pytest.raises(BranchmergeError, match="no SFT examples"):
        train_sft([], tiny_model_dir, tmp_path / "x", show_progress=False)
    assert not (tmp_path / "x").exists()


def test_reasoning_field_layout_renders_like_think_tags_and_is_refused_where_ignored(tokenizer):
    import copy

    from branchmerge.errors import BranchmergeError

    p = Problem(id="p", domain="add", question="What is 2+2?", reference="4")
    ok = Trace(
        problem_id="p",
        teacher="t",
        model="m",
        sample=0,
        temperature=0.6,
        reasoning="2+2=4",
        answer="4",
        verified=True,
    )
    with pytest.raises(BranchmergeError, match="never reads reasoning_content"):
        build_sft_examples([ok], {"p": p}, tokenizer, layout="field")
    assert (
        build_sft_examples([ok], {"p": p}, tokenizer, layout="auto")[0][0]
        .messages[1]["content"]
        .startswith("<think>")
    )
    # A Qwen3-style template that renders the field itself: the same text, so the same token count.
    qwen = copy.deepcopy(tokenizer)
    qwen.chat_template = tokenizer.chat_template.replace(
        "message['content']",
        "(('<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n') "
        "if message.get('reasoning_content') else '') + message['content']",
    )
    (think,), _ = build_sft_examples([ok], {"p": p}, qwen, layout="think")
    (field,), _ = build_sft_examples([ok], {"p": p}, qwen, layout="auto")
    assert field.messages[1] == {"role": "assistant", "content": "4", "reasoning_content": "2+2=4"}
    assert field.num_tokens == think.num_tokens


def test_sft_stats_histogram_and_datasets_folder(add_examples, tmp_path):
    import datasets

    from branchmerge.train.sft_data import length_histogram, save_as_dataset, sft_stats

    examples = add_examples
    stats = sft_stats(examples)
    lengths = sorted(e.num_tokens for e in examples)
    assert (
        stats["examples"] == 48
        and stats["total_tokens"] == sum(lengths)
        and stats["max_tokens"] == lengths[-1]
    )
    assert sum(stats["per_domain"].values()) == 48 and stats["per_teacher"] == {"t": 48}
    length_histogram(examples, tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    save_as_dataset(examples, tmp_path / "ds")
    back = datasets.load_from_disk(str(tmp_path / "ds"))
    assert (
        len(back) == 48
        and back[3]["messages"] == examples[3].messages
        and back[3]["domain"] == examples[3].domain
    )
