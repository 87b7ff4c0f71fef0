"""SFT methods beyond full/LoRA (tests/test_train.py): DoRA, QLoRA's requirements, LoRA target presets, packing
without cross-contamination, resume after a crash, per-domain held-out loss, and the CLI options for them."""

import importlib.util
import logging
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback

from branchmerge.errors import BranchmergeError
from branchmerge.records import write_jsonl
from branchmerge.train import SFTSettings, train_sft
from branchmerge.train.sft import build_sft_trainer, split_heldout
from branchmerge.train.sft_methods import TARGET_MODULES, lora_targets
from branchmerge.train.trl_run import checkpoints_dir
from sft_fixtures import solved_examples

QUICK = {"batch_size": 8, "report_to": "none"}


@pytest.fixture(scope="module")
def examples(tokenizer):
    """24 `add` and 24 `sort` examples, one verified trace per problem."""
    return solved_examples(tokenizer, "add", 24) + solved_examples(tokenizer, "sort", 24)


def _loads_as_plain_weights(out, base_dir):
    weights = load_file(out / "model.safetensors")
    base = load_file(base_dir / "model.safetensors")
    assert set(weights) == set(base)  # no lora_A/B, no DoRA magnitude left
    assert any(not torch.equal(weights[k], base[k]) for k in base)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] == len(base["model.embed_tokens.weight"])


def test_dora_loss_falls_and_saves_plain_full_weights(examples, tiny_model_dir, tmp_path):
    s = SFTSettings(method="dora", max_steps=20, learning_rate=1e-2, **QUICK)
    r = train_sft(examples, tiny_model_dir, tmp_path / "dora", s, show_progress=False)
    assert r.final_loss < r.first_loss - 0.3
    _loads_as_plain_weights(tmp_path / "dora", tiny_model_dir)


@pytest.mark.parametrize(
    ("settings", "needs"),
    [
        (
            {"method": "qlora"},
            ["method qlora: a CUDA GPU", "pip install bitsandbytes", "lora or dora trains"],
        ),
        ({"use_liger_kernel": True}, ["pip install liger-kernel"]),
    ],
)
def test_missing_gpu_pieces_are_one_clear_error_before_any_model_loads(
    settings, needs, examples, tiny_model_dir, tmp_path, monkeypatch
):
    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("this machine can run QLoRA")

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the check")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_loading)
    with pytest.raises(BranchmergeError) as err:
        train_sft(examples, tiny_model_dir, tmp_path / "x", SFTSettings(**settings), show_progress=False)
    assert all(n in str(err.value) for n in needs), str(err.value)
    assert not (tmp_path / "x").exists()
    assert SFTSettings(method="qlora").bf16 and not SFTSettings(method="qlora", bf16=False).bf16


def test_lora_target_presets_name_real_projection_layers(caplog):
    small = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "vocab_size": 64,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    for model_type, names in TARGET_MODULES.items():
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **small))
        linear = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        assert set(names) <= linear - {"lm_head"}, model_type
        if model_type in ("qwen3", "llama", "phi3"):  # dense models: every projection is adapted
            assert set(names) == linear - {"lm_head"}, model_type
    assert lora_targets("qwen3", None) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert lora_targets("qwen3", ["q_proj"]) == ["q_proj"]
    with caplog.at_level(logging.WARNING):
        assert lora_targets("brand_new_arch", None) == "all-linear"
    assert "no target-module preset for model_type 'brand_new_arch'" in caplog.text


def test_packed_examples_never_see_each_other_and_keep_the_assistant_mask(
    examples, tiny_model_dir, tokenizer, tmp_path
):
    """Two examples packed into one row by the trainer's own packing, collated by its own collator, through its own
    model: each example's logits and training log-probs equal those of the example run alone."""
    pair = [examples[0], examples[30]]  # an `add` and a `sort` example, of different lengths
    s = SFTSettings(method="full", packing=True, max_length=512, **QUICK)
    trainer = build_sft_trainer(pair, tiny_model_dir, s, tmp_path / "_trainer")
    (row,) = trainer.train_dataset  # one packed row holds both
    batch = trainer.data_collator([row])
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # padding-free
    bounds = [0, *torch.tensor(row["seq_lengths"]).cumsum(0).tolist()]
    assert batch["position_ids"][0].tolist() == [i for n in row["seq_lengths"] for i in range(n)]

    labels = batch["labels"][0].tolist()
    model = trainer.model.eval()
    logits_inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        packed_logits = model(**logits_inputs).logits[0]
        packed_logp = model(**batch, fused_lm_head=True).log_probs[0]
        unmasked = model(input_ids=batch["input_ids"]).logits[0]  # the same row without the restarts
        # The loss covers exactly the labelled tokens (the assistant turns, checked token by token below).
        assert (packed_logp != 0).tolist() == [label != -100 for label in labels[1:]]
        for start, end in zip(bounds, bounds[1:]):
            alone = trainer.data_collator(
                [
                    {
                        "input_ids": row["input_ids"][start:end],
                        "labels": row["labels"][start:end],
                        "seq_lengths": [end - start],
                    }
                ]
            )
            alone_logits = model(**{k: v for k, v in alone.items() if k != "labels"}).logits[0]
            assert torch.allclose(packed_logits[start:end], alone_logits, atol=1e-5)
            # log_probs[i] scores token i+1, so an example's last position scores nothing of the next example
            alone_logp = model(**alone, fused_lm_head=True).log_probs[0]
            assert torch.allclose(packed_logp[start : end - 1], alone_logp, atol=1e-5)
            if start > 0:  # the control: a plain concatenation does leak, so the test can fail
                assert (unmasked[start:end] - alone_logits).abs().max() > 1e-2

    # Token by token, the labels of each packed example are the assistant mask of that example tokenized alone.
    by_ids = {}
    for e in pair:
        out = tokenizer.apply_chat_template(e.messages, return_dict=True, return_assistant_tokens_mask=True)
        by_ids[tuple(out["input_ids"])] = out["assistant_masks"]
    seen = 0
    for start, end in zip(bounds, bounds[1:]):
        ids = tuple(batch["input_ids"][0, start:end].tolist())
        mask = by_ids[ids]
        assert labels[start:end] == [t if m else -100 for t, m in zip(ids, mask)]
        assert 0 < sum(mask) < len(mask)
        seen += 1
    assert seen == 2


def test_packed_training_lowers_the_loss(examples, tiny_model_dir, tmp_path):
    s = SFTSettings(
        method="full",
        packing=True,
        max_length=512,
        max_steps=12,
        batch_size=2,
        learning_rate=3e-3,
        report_to="none",
    )
    r = train_sft(examples, tiny_model_dir, tmp_path / "packed", s, show_progress=False)
    assert r.final_loss < r.first_loss - 0.3
    _loads_as_plain_weights(tmp_path / "packed", tiny_model_dir)


class _CrashAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise RuntimeError("simulated crash")


class _Steps(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(state.global_step)


def test_a_crashed_run_resumes_from_its_last_checkpoint(examples, tiny_model_dir, tmp_path):
    out = tmp_path / "expert"
    s = SFTSettings(method="lora", max_steps=8, save_steps=3, learning_rate=1e-2, **QUICK)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sft(examples, tiny_model_dir, out, s, show_progress=False, callbacks=[_CrashAt(5)])
    ckpt = checkpoints_dir(out)
    assert not out.exists() and ckpt.name == "expert.partial-ckpt"
    assert sorted(p.name for p in ckpt.glob("checkpoint-*")) == ["checkpoint-3"]

    with pytest.raises(BranchmergeError, match="interrupted run .*checkpoint-3.*--resume"):
        train_sft(examples, tiny_model_dir, out, s, show_progress=False)  # never silently restarts or deletes
    with pytest.raises(BranchmergeError, match="other data, base model or settings"):
        train_sft(
            examples[:-1], tiny_model_dir, out, s.model_copy(update={"resume": True}), show_progress=False
        )

    steps = _Steps()
    r = train_sft(
        examples,
        tiny_model_dir,
        out,
        s.model_copy(update={"resume": True}),
        show_progress=False,
        callbacks=[steps],
    )
    assert r.resumed_from_step == 3 and r.steps == 8
    assert steps.steps == [4, 5, 6, 7, 8]  # the global step continues; it does not restart at 1
    assert not ckpt.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["expert"]
    _loads_as_plain_weights(out, tiny_model_dir)


def test_heldout_loss_per_domain(examples, tiny_model_dir, tmp_path):
    train, heldout = split_heldout(examples, 0.25, seed=1)
    assert {e.domain for e in heldout} == {"add", "sort"} and len(heldout) == 12
    assert not {e.problem_id for e in train} & {e.problem_id for e in heldout}
    assert split_heldout(examples, 0.25, seed=1) == (train, heldout)  # seeded

    s = SFTSettings(method="lora", max_steps=6, eval_steps=3, learning_rate=1e-2, **QUICK)
    evals = _EvalLogs()
    r = train_sft(
        train,
        tiny_model_dir,
        tmp_path / "e",
        s,
        eval_examples=heldout,
        show_progress=False,
        callbacks=[evals],
    )
    assert set(r.eval_losses) == {"add", "sort"}
    assert all(math.isfinite(v) and v > 0 for v in r.eval_losses.values())
    assert evals.steps == {"eval_add_loss": [3, 6], "eval_sort_loss": [3, 6]}  # every eval_steps, each domain
    _loads_as_plain_weights(tmp_path / "e", tiny_model_dir)


class _EvalLogs(TrainerCallback):
    def __init__(self):
        self.steps = {}

    def on_log(self, args, state, control, logs=None, **kw):
        for key in logs or {}:
            if key.startswith("eval_") and key.endswith("_loss"):
                self.steps.setdefault(key, []).append(state.global_step)


def test_cli_sft_options(examples, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from branchmerge.cli.main import app

    data = tmp_path / "sft.jsonl"
    write_jsonl(data, examples)
    common = [str(data), "--base", str(tiny_model_dir), "--out", str(tmp_path / "x")]
    runner = CliRunner()

    bad = runner.invoke(app, ["train", "reward", *common, "--problems", "p", "--packing"])
    assert bad.exit_code == 2 and "train reward: No such option: --packing" in bad.output
    bad = runner.invoke(app, ["train", "sft", *common, "--eval-fraction", "1.5"])
    assert bad.exit_code == 2 and "--eval-fraction 1.5: expected a number between 0 and 1" in bad.output
    if not torch.cuda.is_available():
        bad = runner.invoke(app, ["train", "sft", *common, "--method", "qlora"])
        assert bad.exit_code == 2 and "CUDA GPU" in bad.output and not (tmp_path / "x").exists()

    ok = runner.invoke(
        app,
        [
            "train",
            "sft",
            *common,
            "--method",
            "dora",
            "--eval-fraction",
            "0.25",
            "--max-steps",
            "4",
            "--batch-size",
            "8",
        ]
        + ["--lr", "1e-2", "--report-to", "none", "--resume"],
    )
    assert ok.exit_code == 0, ok.output
    assert "4 steps on 36 examples" in ok.output and "held-out loss (12 examples): add" in ok.output
    assert (tmp_path / "x" / "model.safetensors").exists() and not checkpoints_dir(tmp_path / "x").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboardX") is None and importlib.util.find_spec("tensorboard") is None,
    reason="no TensorBoard writer installed",
)
def test_tensorboard_logs_land_beside_the_output(examples, tiny_model_dir, tmp_path):
    s = SFTSettings(max_steps=2, batch_size=8, report_to="tensorboard")
    train_sft(examples[:8], tiny_model_dir, tmp_path / "runs" / "expert", s, show_progress=False)
    assert list((tmp_path / "runs" / "logs" / "expert").glob("events.out.tfevents.*"))
