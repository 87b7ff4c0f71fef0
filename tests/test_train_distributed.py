"""Multi-process training: two CPU processes under torchrun (DDP over gloo) train one model and write it once.

This is the path `accelerate launch --config_file configs/...` takes on GPUs; the shipped accelerate configs are
checked by accelerate's own loader.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from branchmerge.records import write_jsonl
from branchmerge.tinylab.weights import student_dir
from sft_fixtures import solved_examples

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun is not installed")  # fmt: skip
def test_two_processes_train_one_model_and_write_it_once(tmp_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(student_dir())
    examples = solved_examples(tok, "add", 16, max_length=512) + solved_examples(
        tok, "sort", 16, max_length=512
    )
    write_jsonl(tmp_path / "sft.jsonl", examples)
    out = tmp_path / "models" / "expert"
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--nproc_per_node", "2", "-m", "branchmerge", "train", "sft"]
    cmd += [str(tmp_path / "sft.jsonl")]
    cmd += ["--base", str(student_dir()), "--out", str(out), "--max-steps", "4", "--batch-size", "4"]
    cmd += ["--report-to", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("4 steps on 32 examples") == 2  # both ranks trained to the end
    assert sorted(p.name for p in out.parent.iterdir()) == ["expert"]  # one output, no rank's leftovers
    trained = load_file(out / "model.safetensors")
    base = load_file(Path(student_dir()) / "model.safetensors")
    assert trained.keys() == base.keys()
    assert any(not torch.equal(trained[k], base[k]) for k in base)


@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3", "fsdp"])
def test_shipped_accelerate_configs_load(name: str) -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(CONFIGS / f"{name}.yaml"))
    assert cfg.mixed_precision == "bf16" and cfg.num_machines == 1
    if name == "fsdp":
        assert (
            cfg.distributed_type.value == "FSDP"
            and cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        )
    else:
        assert cfg.distributed_type.value == "DEEPSPEED"
        assert cfg.deepspeed_config["zero_stage"] == int(name[-1])
