import torch
from transformers import AutoModelForCausalLM

from branchmerge.teachers.local import LocalModel, SamplingParams
from branchmerge.teachers.thinking import split_reasoning

MSG = [{"role": "user", "content": "What is 12+30?"}]


def test_greedy_with_cache_and_left_padding_equals_plain_greedy(tiny_model_dir):
    """Batched, left-padded, KV-cached decoding must give exactly the tokens of step-by-step full forwards."""
    lm = LocalModel(tiny_model_dir)
    short = [{"role": "user", "content": "hi"}]
    outs = lm.complete(
        [
            (MSG, SamplingParams(temperature=0, max_tokens=12)),
            (short, SamplingParams(temperature=0, max_tokens=12)),
        ]
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for messages, got in zip([MSG, short], outs):
        ids = lm.prompt_ids(messages)
        want = []
        for _ in range(got.completion_tokens):
            with torch.no_grad():
                nxt = int(model(torch.tensor([ids + want])).logits[0, -1].argmax())
            want.append(nxt)
        assert lm.tokenizer.decode(want, skip_special_tokens=True) == got.text
        assert got.prompt_tokens == len(ids)


def test_seeds_make_sampling_reproducible_per_row(tiny_model_dir):
    lm = LocalModel(tiny_model_dir)
    p1, p2 = (
        SamplingParams(temperature=1.0, max_tokens=16, seed=1),
        SamplingParams(temperature=1.0, max_tokens=16, seed=2),
    )
    a = lm.complete([(MSG, p1), (MSG, p2)])
    b = lm.complete([(MSG, p2), (MSG, p1), (MSG, p1)])  # other batch mates and order
    assert a[0].text == b[1].text == b[2].text
    assert a[1].text == b[0].text
    assert a[0].text != a[1].text
    assert all(c.finish_reason == "length" and c.completion_tokens == 16 for c in a)


def test_split_reasoning_layouts():
    assert split_reasoning("<think>\nstep\n</think>\n\n42") == ("step", "42", True)
    assert split_reasoning("step</think>42") == ("step", "42", True)  # <think> was in the prompt
    assert split_reasoning("<think>\nstill thinking") == ("still thinking", "", False)
    assert split_reasoning("just 42") == ("", "just 42", True)
    assert split_reasoning("<think>a</think>b</think>c") == ("a</think>b", "c", True)
