"""Logit KD: the loss against hand-computed numbers, the top-k cache (content-keyed, resumable, 120 B/token at
k=20), training from the cache and online, and the shared-tokenizer check."""

import json
import math
import random
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from branchmerge.errors import BranchmergeError
from branchmerge.tinylab.modeling import random_model, save_checkpoint, tiny_qwen3_config
from branchmerge.tinylab.tokenizer import build_tokenizer
from branchmerge.tinylab.weights import student_dir, teacher_dir
from branchmerge.train.kd import KDCollator, KDSettings, TopK, kd_loss, train_kd
from branchmerge.train.kd_cache import TeacherCache, cache_teacher_logits, tokenize_examples
from sft_fixtures import solved_examples

LN2 = math.log(2)


def _logits(probs, tau=1.0, shift=3.0):
    """Logits whose softmax at temperature `tau` is `probs` (plus a shift softmax must ignore)."""
    return tau * torch.log(torch.tensor(probs)) + shift


# --------------------------------------------------------------------------------------------- loss ----------


def test_kd_loss_full_logits_forward_reverse_mix():
    # Position 0: p_T = [.8, .1, .1], q_S = [.4, .4, .2]
    #   forward  .8 ln(.8/.4) + .1 ln(.1/.4) + .1 ln(.1/.2) = .8ln2 − .2ln2 − .1ln2 = 0.5 ln2
    #   reverse  .4 ln(.4/.8) + .4 ln(.4/.1) + .2 ln(.2/.1) = −.4ln2 + .8ln2 + .2ln2 = 0.6 ln2
    # Position 1: masked out, garbage. Position 2: student = teacher, KL 0. Mean over the 2 counted positions.
    teacher = torch.stack([_logits([0.8, 0.1, 0.1]), torch.tensor([50.0, -50, 0]), _logits([0.2, 0.3, 0.5])])
    student = torch.stack(
        [_logits([0.4, 0.4, 0.2], shift=-7), torch.tensor([-50.0, 50, 0]), _logits([0.2, 0.3, 0.5])]
    )
    mask = torch.tensor([True, False, True])
    assert kd_loss(student, teacher, mask, "forward").item() == pytest.approx(0.5 * LN2 / 2, rel=1e-6)
    assert kd_loss(student, teacher, mask, "reverse").item() == pytest.approx(0.6 * LN2 / 2, rel=1e-6)
    # mix α = .25: .25·0.5ln2 + .75·0.6ln2 = 0.575 ln2
    mix = kd_loss(student, teacher, mask, "mix", mix_weight=0.25)
    assert mix.item() == pytest.approx(0.575 * LN2 / 2, rel=1e-6)


def test_kd_loss_temperature_scales_by_tau_squared():
    # Logits 2·ln p at τ = 2 give back p, so KL = 0.5 ln2 as above, times τ² = 4.
    teacher = _logits([0.8, 0.1, 0.1], tau=2.0)[None, None]
    student = _logits([0.4, 0.4, 0.2], tau=2.0)[None, None]
    loss = kd_loss(student, teacher, torch.ones(1, 1, dtype=torch.bool), "forward", temperature=2.0)
    assert loss.item() == pytest.approx(4 * 0.5 * LN2, rel=1e-6)


def test_kd_loss_top_k_reference_and_k_equal_vocab():
    # Teacher p = [.5, .3, .15, .05], top-2 S = {0, 1} (stored in any order), renormalised p̃ = [.625, .375].
    # Student q = [.1, .3, .4, .2] over the full vocabulary:
    #   forward (1')  .625 ln(.625/.1) + .375 ln(.375/.3)
    #   reverse (2')  q̃ = [.1, .3]/.4 = [.25, .75]:  .25 ln(.25/.625) + .75 ln(.75/.375)
    top = TopK(ids=torch.tensor([[1, 0]]), logprobs=torch.log(torch.tensor([[0.3, 0.5]])).half())
    student = _logits([[0.1, 0.3, 0.4, 0.2]])
    mask = torch.tensor([True])
    fwd = 0.625 * math.log(6.25) + 0.375 * math.log(1.25)
    rev = 0.25 * math.log(0.4) + 0.75 * math.log(2.0)
    assert kd_loss(student, top, mask, "forward").item() == pytest.approx(fwd, rel=1e-3)  # fp16 log-probs
    assert kd_loss(student, top, mask, "reverse").item() == pytest.approx(rev, rel=1e-3)
    assert kd_loss(student, top, mask, "mix", 0.5).item() == pytest.approx((fwd + rev) / 2, rel=1e-3)

    # With k = V the cached form is the exact KL.
    torch.manual_seed(0)
    t_logits, s_logits = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.rand(2, 5) > 0.3
    full_top = torch.log_softmax(t_logits, -1).topk(7, dim=-1)
    as_top = TopK(full_top.indices, full_top.values)
    for kind in ("forward", "reverse", "mix"):
        exact = kd_loss(s_logits, t_logits, mask, kind, 0.3, temperature=1.5)  # type: ignore[arg-type]
        cached = kd_loss(s_logits, as_top, mask, kind, 0.3, temperature=1.5)  # type: ignore[arg-type]
        assert cached.item() == pytest.approx(exact.item(), rel=1e-5)


# --------------------------------------------------------------------------------------------- data ----------


@pytest.fixture(scope="module")
def tiny_tok():
    return AutoTokenizer.from_pretrained(student_dir())


def _examples(tok, domain, n, seed=0):
    return solved_examples(tok, domain, n, seed)


@pytest.fixture(scope="module")
def examples(tiny_tok):
    return _examples(tiny_tok, "sort", 6) + _examples(tiny_tok, "compare", 6)


def _direct_topk(model, tok, k):
    """The teacher's own top-k at positions predicting assistant tokens, computed without the cache."""
    ids = torch.tensor([tok.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
    return logp[torch.tensor(tok.select)].topk(k, dim=-1)


# --------------------------------------------------------------------------------------------- cache ---------


def test_cache_round_trip_shuffle_resume_and_size(examples, tiny_tok, tmp_path):
    cache_dir = tmp_path / "cache"
    first = examples[:8]
    rep = cache_teacher_logits(  # small shards, so reads cross shard files
        first, teacher_dir(), cache_dir, tiny_tok, k=20, max_length=512, batch_size=3, shard_tokens=150
    )
    toks = list(tokenize_examples(first, tiny_tok, 512))
    assert (rep.cached, rep.skipped, rep.tokens) == (8, 0, sum(t.rows for t in toks))
    n_shards = len(json.loads((cache_dir / "index.json").read_text())["shards"])
    assert n_shards >= 3
    # Size: k·(4 + 2) = 120 bytes per assistant token, plus one small safetensors header per shard.
    assert rep.bytes_per_token == 120
    assert rep.tokens * 120 <= rep.disk_bytes <= rep.tokens * 120 + 256 * n_shards

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir(), dtype=torch.float32).eval()
    cache = TeacherCache(cache_dir)
    shuffled = toks[:]
    random.Random(1).shuffle(shuffled)
    for tok in shuffled:  # any order reads each example's own rows
        ids, logprobs = cache[tok.key]
        direct = _direct_topk(teacher, tok, 20)
        assert ids.dtype == torch.int32 and logprobs.dtype == torch.float16 and ids.shape == (tok.rows, 20)
        assert torch.equal(ids.long(), direct.indices)
        assert torch.allclose(logprobs.float(), direct.values, atol=2e-2)

    # The collator puts each row of a shuffled batch at that example's assistant positions.
    rows = [{"input_ids": t.input_ids, "select": t.select, "key": t.key} for t in shuffled[:4]]
    batch = KDCollator(tiny_tok.pad_token_id, cache)(rows)
    for i, tok in enumerate(shuffled[:4]):
        assert torch.equal(
            batch["teacher_ids"][i][batch["select"][i]], _direct_topk(teacher, tok, 20).indices
        )

    # Rerun: everything cached is skipped and no shard is written; two new examples (one twice) are added.
    again = cache_teacher_logits(first, teacher_dir(), cache_dir, tiny_tok, k=20, max_length=512)
    assert (again.cached, again.skipped, again.disk_bytes) == (0, 8, rep.disk_bytes)
    more = cache_teacher_logits(
        examples[:10] + [examples[9]], teacher_dir(), cache_dir, tiny_tok, k=20, max_length=512
    )
    assert (more.cached, more.skipped) == (2, 9)
    index = json.loads((cache_dir / "index.json").read_text())
    assert len(index["shards"]) == n_shards + 1 and len(index["examples"]) == 10
    with pytest.raises(BranchmergeError, match="k=20"):
        cache_teacher_logits(first, teacher_dir(), cache_dir, tiny_tok, k=8, max_length=512)


# --------------------------------------------------------------------------------------------- training ------


def _mean_kl(model_dir, examples, tok, cache):
    """Forward KL(p̃_T‖q_S) per assistant token over `examples`, from the cache."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = [
        {"input_ids": t.input_ids, "select": t.select, "key": t.key}
        for t in tokenize_examples(examples, tok, 512)
    ]
    batch = KDCollator(tok.pad_token_id, cache)(rows)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return kd_loss(logits, TopK(batch["teacher_ids"], batch["teacher_logprobs"]), batch["select"]).item()


def test_kd_from_cache_lowers_kl_and_logs_ce_and_kd(examples, tiny_tok, tmp_path):
    cache_dir, out = tmp_path / "cache", tmp_path / "kd"
    settings = KDSettings(max_steps=12, batch_size=4, max_length=512, learning_rate=2e-4)
    res = train_kd(examples, student_dir(), out, settings, teacher_dir=teacher_dir(), cache_dir=cache_dir)
    assert res.mode == "cache" and res.cache is not None and res.cache.cached == len(examples)
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    # Both terms, per assistant token, logged at every step; the total is their weighted sum.
    assert len(res.history["ce"]) == len(res.history["kd"]) == settings.max_steps
    for loss, ce, kd in zip(res.history["loss"], res.history["ce"], res.history["kd"]):
        assert loss == pytest.approx(0.5 * ce + 0.5 * kd, rel=1e-4)
    cache = TeacherCache(cache_dir)
    before, after = (
        _mean_kl(student_dir(), examples, tiny_tok, cache),
        _mean_kl(out, examples, tiny_tok, cache),
    )
    assert after < 0.8 * before, (before, after)


def test_online_and_cached_give_the_same_loss_at_step_0(examples, tiny_tok, tmp_path):
    """With k = V the cache holds the whole distribution, so the only difference is fp16 rounding."""
    settings = KDSettings(max_steps=1, batch_size=4, max_length=512, top_k=len(tiny_tok), kd_loss="mix")
    some = examples[:4]
    online = train_kd(some, student_dir(), tmp_path / "on", settings, teacher_dir=teacher_dir())
    cache_dir = tmp_path / "cache"
    cache_teacher_logits(some, teacher_dir(), cache_dir, tiny_tok, k=len(tiny_tok), max_length=512)
    cached = train_kd(some, student_dir(), tmp_path / "off", settings, cache_dir=cache_dir)
    assert (online.mode, cached.mode) == ("online", "cache")
    assert cached.first_ce == pytest.approx(online.first_ce, rel=1e-6)
    assert cached.first_kd == pytest.approx(online.first_kd, rel=1e-3)
    assert online.first_kd > 0


def test_cache_missing_examples_is_an_error(examples, tiny_tok, tmp_path):
    cache_teacher_logits(examples[:2], teacher_dir(), tmp_path / "c", tiny_tok, k=4, max_length=512)
    with pytest.raises(BranchmergeError, match="1 of 3 examples are not cached"):
        train_kd(
            examples[:3], student_dir(), tmp_path / "o", KDSettings(max_steps=1), cache_dir=tmp_path / "c"
        )
    with pytest.raises(BranchmergeError, match="teacher folder, a KD cache folder"):
        train_kd(examples[:3], student_dir(), tmp_path / "o")


def test_teacher_with_another_tokenizer_is_refused(examples, tmp_path):
    other_vocab = tmp_path / "other"  # a tokenizer trained to another vocabulary size
    tok = build_tokenizer(vocab_size=300)
    save_checkpoint(random_model(tiny_qwen3_config(tok)), tok, other_vocab)
    with pytest.raises(BranchmergeError, match=r"has 3\d\d tokens, student .* has 331"):
        train_kd(
            examples[:2], student_dir(), tmp_path / "o", KDSettings(max_steps=1), teacher_dir=other_vocab
        )
    # Same size, two digit ids swapped: caught by the sample text.
    swapped = tmp_path / "swapped"
    shutil.copytree(teacher_dir(), swapped)
    spec = json.loads((swapped / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["1"], vocab["2"] = vocab["2"], vocab["1"]
    (swapped / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(BranchmergeError, match="tokenize the same text differently"):
        train_kd(examples[:2], student_dir(), tmp_path / "o", KDSettings(max_steps=1), teacher_dir=swapped)
    assert not (tmp_path / "o").exists()
