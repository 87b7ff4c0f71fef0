import pytest
import torch
from safetensors.torch import load_file

from branchmerge.records import Problem, Trace
from branchmerge.tinylab.domains import generate_problems
from branchmerge.train import SFTSettings, build_sft_examples, train_sft
from branchmerge.train.sft_data import assistant_content


@pytest.fixture(scope="module")
def add_examples(tokenizer):
    problems = generate_problems("add", 48, seed=0)
    traces = [
        Trace(
            problem_id=p.id,
            teacher="t",
            model="m",
            sample=0,
            temperature=0.6,
            reasoning=p.meta["solution"],
            answer=p.reference,
            verified=True,
        )
        for p in problems
    ]
    examples, report = build_sft_examples(traces, {p.id: p for p in problems}, tokenizer)
    assert report.examples == 48
    return examples


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
        SFTSettings(method=method, max_steps=25, batch_size=8, learning_rate=lr),
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
    with pytest.raises(ValueError, match="no SFT examples"):
        train_sft([], tiny_model_dir, tmp_path / "x", show_progress=False)
    assert not (tmp_path / "x").exists()
