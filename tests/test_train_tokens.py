"""Training compute: the tokens an SFT run trains on, counted step by step, against a count made from the chat
template alone; evaluation batches are not counted; a resumed run reports the whole run's."""

import pytest
from transformers import TrainerCallback

from branchmerge.train import SFTSettings, train_sft
from sft_fixtures import solved_examples

STEPS, BATCH = 3, 8


@pytest.fixture(scope="module")
def examples(tokenizer):
    return solved_examples(tokenizer, "add", BATCH)


@pytest.fixture(scope="module")
def per_step(tokenizer, examples):
    """(input tokens, assistant tokens) of the whole set: with batch_size = len(examples), what every step sees.
    Position 0 is never an assistant token, so the causal shift drops no loss token."""
    inputs = loss = 0
    for e in examples:
        out = tokenizer.apply_chat_template(e.messages, return_dict=True, return_assistant_tokens_mask=True)
        inputs += len(out["input_ids"])
        loss += sum(out["assistant_masks"])
        assert out["assistant_masks"][0] == 0
    return inputs, loss


@pytest.mark.parametrize("packing", [False, True])
def test_train_tokens_are_the_tokens_seen_over_all_steps(
    packing, examples, per_step, tiny_model_dir, tmp_path
):
    s = SFTSettings(max_steps=STEPS, batch_size=BATCH, packing=packing, report_to="none")
    r = train_sft(
        examples, tiny_model_dir, tmp_path / "m", s, eval_examples=examples[:4], show_progress=False
    )
    assert (r.train_tokens, r.loss_tokens) == (STEPS * per_step[0], STEPS * per_step[1])
    assert r.train_tokens > sum(e.num_tokens for e in examples)  # not the size of the data set


class _CrashAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 2:
            raise RuntimeError("simulated crash")


def test_a_resumed_run_counts_the_whole_run(examples, per_step, tiny_model_dir, tmp_path):
    s = SFTSettings(max_steps=STEPS, batch_size=BATCH, save_steps=1, report_to="none")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sft(examples, tiny_model_dir, tmp_path / "m", s, show_progress=False, callbacks=[_CrashAt()])
    r = train_sft(
        examples, tiny_model_dir, tmp_path / "m", s.model_copy(update={"resume": True}), show_progress=False
    )
    assert r.resumed_from_step == 1  # the crash came before step 2's checkpoint
    assert (r.train_tokens, r.loss_tokens) == (STEPS * per_step[0], STEPS * per_step[1])
