import torch
from transformers import AutoModelForCausalLM

from branchmerge.teachers.local import LocalModel, SamplingParams, _sample_rows
from branchmerge.teachers.thinking import split_reasoning
from branchmerge.tinylab.weights import student_dir

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


def _batch_sizes(lm: LocalModel) -> list[int]:
    """Record the number of rows of every forward pass of `lm` (a hook on its embedding layer)."""
    sizes: list[int] = []
    lm.model.get_input_embeddings().register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    return sizes


def test_finished_rows_leave_the_batch_and_the_others_decode_as_alone(tiny_model_dir):
    """Rows that stop at different steps: the batch shrinks as each one finishes, and every row's tokens are the
    ones it gets decoded on its own."""
    lm = LocalModel(tiny_model_dir)
    rows = [
        (MSG, SamplingParams(temperature=0, max_tokens=3)),
        ([{"role": "user", "content": "hi"}], SamplingParams(temperature=0, max_tokens=11)),
        (
            [{"role": "user", "content": "Sort ascending: 9 1 5 3"}],
            SamplingParams(temperature=0, max_tokens=7),
        ),
        (MSG, SamplingParams(temperature=1.0, max_tokens=5, seed=4)),
    ]
    sizes = _batch_sizes(lm)
    together = lm.complete(rows)
    assert [c.completion_tokens for c in together] == [3, 11, 7, 5]
    # One prefill of 4 rows, then each step decodes only the rows not yet finished.
    assert sizes == [4, 4, 4, 3, 3, 2, 2, 1, 1, 1, 1]
    for row, got in zip(rows, together):
        assert lm.complete([row])[0] == got


def test_rows_stopping_on_their_own_match_decoding_each_alone():
    """The shipped student stops by itself (end of sequence) after answers of different lengths."""
    lm = LocalModel(student_dir())
    questions = [
        "What is 27+65?",
        "Sort ascending: 72 32 27",
        "Which is largest: 115, 295, 380, 615?",
        "What is 7860+3058?",
    ]
    rows = [
        ([{"role": "user", "content": q}], SamplingParams(temperature=0, max_tokens=200)) for q in questions
    ]
    sizes = _batch_sizes(lm)
    together = lm.complete(rows)
    assert all(c.finish_reason == "stop" for c in together)
    assert len({c.completion_tokens for c in together}) > 1  # they stop at different steps
    assert sorted(sizes, reverse=True) == sizes and sizes[-1] < len(rows)
    assert len(sizes) == max(c.completion_tokens for c in together) + 1  # the last row's stop token ends it
    for row, got in zip(rows, together):
        assert lm.complete([row])[0] == got


def test_a_seeded_row_draws_the_same_tokens_whatever_its_batch(tiny_model_dir):
    """Same seed, same tokens: alone, among greedy rows, among other sampled rows of other lengths and limits."""
    lm = LocalModel(tiny_model_dir)
    mine = (MSG, SamplingParams(temperature=0.8, top_p=0.9, max_tokens=12, seed=7))
    others = [
        ([{"role": "user", "content": "hi"}], SamplingParams(temperature=0, max_tokens=2)),
        ([{"role": "user", "content": "Sort ascending: 9 1 5 3 8 2"}], SamplingParams(1.0, 0.95, 4, seed=1)),
        (MSG, SamplingParams(temperature=1.0, max_tokens=20, seed=8)),
    ]
    alone = lm.complete([mine])[0]
    assert lm.complete([others[0], mine, others[1]])[1] == alone
    assert lm.complete([*others, mine])[3] == alone
    assert lm.complete([mine, *others])[0] == alone
    assert alone != lm.complete([others[2]])[0]


def _one_row(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator) -> int:
    """The per-row reference: temperature, top-p filter, then torch.multinomial with the row's generator."""
    probs = torch.softmax(logits / p.temperature, dim=-1)
    if p.top_p < 1.0:
        sorted_p, idx = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < p.top_p
        probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


def test_batched_draws_equal_torch_multinomial_row_by_row():
    torch.manual_seed(0)
    for trial in range(20):
        rows = 1 + trial % 9
        logits = torch.randn(rows, 331) * (1 + trial % 5)
        params = [
            SamplingParams([0.6, 1.0, 0.3][i % 3], [0.95, 1.0, 0.5, 0.9][(i + trial) % 4], 8, trial * 100 + i)
            for i in range(rows)
        ]
        ref = [torch.Generator().manual_seed(p.seed) for p in params]
        mine = [torch.Generator().manual_seed(p.seed) for p in params]
        for _step in range(3):  # the generators advance alike
            want = [_one_row(logits[i], params[i], ref[i]) for i in range(rows)]
            assert _sample_rows(logits, params, mine).tolist() == want
