"""tinylab: domain generators, tokenizer and template mask, the weight builder's loop, and the shipped weights."""

from __future__ import annotations

import re

import pytest
import torch

from branchmerge.errors import BranchmergeError
from branchmerge.teachers.local import LocalModel, SamplingParams
from branchmerge.tinylab import build, weights
from branchmerge.tinylab.domains import DOMAINS, MAX_LEVEL, generate_problems, make_item
from branchmerge.tinylab.modeling import random_model, tiny_qwen3_config

LEVELS = range(1, MAX_LEVEL + 1)


def _items(domain: str, n: int = 40):
    return [make_item(domain, seed=3, index=i) for i in range(n)]


def test_add_answers_are_the_sum_and_digits_grow_with_level():
    for it in _items("add"):
        a, b = map(int, re.fullmatch(r"What is (\d+)\+(\d+)\?", it.question).groups())
        assert int(it.answer) == a + b
        assert len(str(a)) == it.level + 1
        assert it.solution.count("\n") + 1 >= len(str(a))  # one line per column


def test_sort_answers_are_sorted_and_compare_answers_are_the_max():
    for it in _items("sort"):
        xs = list(map(int, it.question.removeprefix("Sort ascending: ").split()))
        assert len(xs) == it.level + 2
        assert list(map(int, it.answer.split())) == sorted(xs)
    for it in _items("compare"):
        xs = list(map(int, re.findall(r"\d+", it.question)))
        assert int(it.answer) == max(xs)
        assert it.solution.splitlines()[-1].endswith(f"keep {it.answer}")


def test_levels_cycle_and_unknown_domain_is_named():
    assert [make_item("sort", 0, i).level for i in range(8)] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert {make_item("add", 0, i, levels=(2,)).level for i in range(5)} == {2}
    with pytest.raises(KeyError, match="known: add, sort, compare"):
        make_item("algebra", 0, 0)


def test_generate_problems_is_deterministic_distinct_and_honours_exclude():
    first = generate_problems("compare", 30, seed=11)
    assert [p.model_dump() for p in first] == [
        p.model_dump() for p in generate_problems("compare", 30, seed=11)
    ]
    assert [p.question for p in first] != [p.question for p in generate_problems("compare", 30, seed=12)]
    assert len({p.question for p in first}) == 30
    excluded = {p.question for p in first[:10]}
    again = generate_problems("compare", 30, seed=11, exclude=excluded)
    assert len(again) == 30 and not excluded & {p.question for p in again}
    assert first[0].meta["solution"] and first[0].grader["type"] == "numeric"


def test_exhausted_problem_space_raises_instead_of_looping():
    every_level1_sum = {f"What is {a}+{b}?" for a in range(10, 100) for b in range(1, 100)}
    with pytest.raises(ValueError, match="cannot find 1 distinct 'add' problems"):
        generate_problems("add", 1, seed=0, levels=(1,), exclude=every_level1_sum)


def test_tokenizer_splits_digits_singly(tokenizer):
    tokens = tokenizer.tokenize("What is 90817+2345?")
    digits = [t for t in tokens if any(c.isdigit() for c in t)]
    assert "".join(digits).replace("Ġ", "") == "908172345"
    assert all(len(t.replace("Ġ", "")) == 1 for t in digits)
    assert tokenizer.convert_tokens_to_ids("</think>") != tokenizer.unk_token_id


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_assistant_mask_covers_exactly_content_and_im_end(tokenizer, domain):
    problem = generate_problems(domain, 1, seed=5)[0]
    content = build.assistant_content(problem)
    messages = [{"role": "user", "content": problem.question}, {"role": "assistant", "content": content}]
    enc = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    on = [i for i, m in enumerate(mask) if m]
    assert on == list(range(on[0], on[-1] + 1))  # one contiguous span
    assert tokenizer.decode([ids[i] for i in on]) == content + "<|im_end|>"
    assert tokenizer.decode(ids[: on[0]]).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(ids[on[-1] + 1 :]) == "\n"  # the newline after <|im_end|> is not trained
    example = build.encode(tokenizer, messages)
    assert [t for t in example.labels if t != build.IGNORE] == [ids[i] for i in on]


def _micro_examples(tokenizer, n: int = 8):
    return build.encode_problems(tokenizer, generate_problems("compare", n, seed=1, levels=(1,)))


def test_collate_pads_right_and_ignores_padding(tokenizer):
    examples = _micro_examples(tokenizer, 3)
    batch = build.collate(examples, tokenizer.pad_token_id)
    width = max(len(e.input_ids) for e in examples)
    assert batch["input_ids"].shape == (3, width)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert (batch["labels"][row, n:] == build.IGNORE).all()


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    plan = build.TrainPlan(steps=100, batch_size=1, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [build.cosine_lr(s, plan) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)


def test_training_loop_lowers_the_loss_and_is_deterministic(tokenizer):
    """A micro model memorising 8 items: the loss must fall, and a rerun must give the same numbers."""
    examples = _micro_examples(tokenizer)
    plan = build.TrainPlan(steps=80, batch_size=4, lr=3e-3, warmup_steps=3)
    config = tiny_qwen3_config(
        tokenizer, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64
    )

    def run() -> list[float]:
        return build.train(random_model(config, seed=0), examples, plan, tokenizer.pad_token_id, seed=0)

    losses = run()
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3
    assert losses == run()


def test_shipped_dirs_and_missing_weights_error(tmp_path, monkeypatch):
    assert (weights.teacher_dir() / "model.safetensors").is_file()
    assert (weights.student_dir() / "model.safetensors").is_file()
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(BranchmergeError, match="python -m branchmerge.tinylab.build"):
        weights.teacher_dir()


@pytest.fixture(scope="module")
def shipped_teacher() -> LocalModel:
    torch.manual_seed(0)
    return LocalModel(weights.teacher_dir())


@pytest.fixture(scope="module")
def training_questions() -> set[str]:
    return build.training_questions(build.DEFAULT_SEED)


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_shipped_teacher_solves_heldout_items(shipped_teacher, training_questions, domain):
    """A real check on the shipped weights: 20 unseen items per domain, greedy, at least 85% right."""
    problems = build.heldout_problems(
        domain, seed=build.DEFAULT_SEED + 1, count=20, exclude=training_questions
    )
    assert not training_questions & {p.question for p in problems}
    assert build.accuracy(shipped_teacher, problems, temperature=0.0) >= 0.85


def test_shipped_teacher_writes_the_thinking_layout(shipped_teacher):
    problem = generate_problems("sort", 1, seed=99, levels=(3,))[0]
    (c,) = shipped_teacher.complete([([{"role": "user", "content": problem.question}], SamplingParams(0.0))])
    assert c.finish_reason == "stop" and c.text.startswith("<think>\n") and "</think>\n\n" in c.text
    assert c.reasoning.splitlines()[0].startswith("take ")


def test_generalist_pass_is_bit_for_bit_repeatable(tmp_path, monkeypatch):
    """Two generalist passes from the same draft give identical bytes (what `make weights` relies on); a pass
    on another seed does not (the control)."""
    import hashlib
    from dataclasses import replace

    monkeypatch.setattr(build, "GENERALIST_PLAN", replace(build.GENERALIST_PLAN, steps=3, batch_size=4))
    draft = weights.student_dir()

    def digest(out, seed=build.DEFAULT_SEED):
        build.generalist_pass(draft, out, seed)
        return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()

    first = digest(tmp_path / "a")
    assert digest(tmp_path / "b") == first
    assert digest(tmp_path / "c", seed=build.DEFAULT_SEED + 1) != first
