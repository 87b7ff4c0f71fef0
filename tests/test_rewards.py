"""GRPO reward functions: each checked by hand, in both completion formats, with rows that do not apply."""

from __future__ import annotations

import pytest

from branchmerge.train.rewards import accuracy_reward, format_reward, grpo_rewards, range_reward

GOOD = "<think>\n2 plus 2 is 4\n</think>\n\n4"


def test_format_reward_needs_closed_thinking_then_an_answer() -> None:
    completions = [GOOD, "<think>cut mid-thought", "4", "<think>\n\n</think>\n\nx", "<think>r</think>\n\n"]
    assert format_reward(completions) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert format_reward([[{"role": "assistant", "content": GOOD}]]) == [1.0]  # conversational format


def test_accuracy_reward_grades_the_answer_and_skips_rows_without_reference() -> None:
    got = accuracy_reward(
        [GOOD, GOOD, "<think>r</think>\n\n4.0", GOOD],
        reference=["4", "5", "4", None],
        grader=[None, None, {"type": "numeric"}, None],
    )
    assert got == [1.0, 0.0, 1.0, None]


def test_range_reward_is_minus_the_distance_outside_the_band() -> None:
    lengths = range_reward(lambda prompts, texts: [float(len(t)) for t in texts], 3, 5, name="len_reward")
    assert lengths(["ab", "abcd", "abcdefgh"], prompts=["p"] * 3) == [-1.0, 0.0, -3.0]
    assert lengths.__name__ == "len_reward"
    with pytest.raises(ValueError, match="low 5 > high 3"):
        range_reward(lambda p, t: [], 5, 3, name="bad")
    short = range_reward(lambda p, t: [1.0], 0, 1, name="short")
    with pytest.raises(ValueError, match="1 scores for 2 completions"):
        short(["a", "b"])


def test_grpo_rewards_pairs_functions_with_their_weights() -> None:
    funcs, weights = grpo_rewards(cd=(lambda p, t: [7.0] * len(t), 2, 6), lambda_cd=0.5)
    assert [f.__name__ for f in funcs] == ["format_reward", "accuracy_reward", "cd_reward"]
    assert weights == [1.0, 1.0, 0.5]
    assert funcs[2]([GOOD]) == [-1.0]


def test_trl_grpo_trainer_takes_the_rewards_and_weights_them(tmp_path) -> None:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from branchmerge.tinylab.weights import student_dir

    tok = AutoTokenizer.from_pretrained(student_dir())
    model = AutoModelForCausalLM.from_pretrained(student_dir())
    rows = [
        {"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "reference": str(2 * i)}
        for i in range(8)
    ]
    funcs, weights = grpo_rewards(cd=(lambda p, t: [float(len(x) % 10) for x in t], 2, 6), lambda_cd=0.5)
    args = GRPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=24,
        reward_weights=weights,
        report_to=[],
        logging_steps=1,
        use_cpu=True,
        save_strategy="no",
        bf16=False,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tok,
    )
    trainer.train()
    for log in [h for h in trainer.state.log_history if "reward" in h]:
        parts = [log[f"rewards/{f.__name__}/mean"] for f in funcs]
        assert log["reward"] == pytest.approx(
            sum(w * m for w, m in zip(weights, parts, strict=True)), abs=1e-5
        )


def test_accuracy_reward_runs_code_tests_without_a_textual_reference() -> None:
    spec = {"type": "code", "tests": ["assert f(2) == 4"]}
    good = "<think>double it</think>\n\n```python\ndef f(x):\n    return 2 * x\n```"
    bad = "<think>add</think>\n\n```python\ndef f(x):\n    return x + 1\n```"
    got = accuracy_reward(
        [good, bad, GOOD], reference=[None, "", "four"], grader=[spec, spec, {"type": "numeric"}]
    )
    assert got == [1.0, 0.0, None]  # "four" is no number: the grader cannot read it, so no reward
