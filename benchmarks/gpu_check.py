"""The real-scale path on one GPU, measured: QLoRA SFT of a Qwen3-4B-shaped model, the memory model's estimate
for the same run, a merge of two 4B-shaped checkpoints on the GPU and on the CPU, and vLLM serving the merge.

    python benchmarks/gpu_check.py --out benchmarks/results-gpu.json [--vllm-python /path/to/vllm-venv/bin/python]
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/smoke.json     # tiny shapes; checks the script on a CPU

`benchmarks/gpu_check.sh` installs what this needs and runs it. Weights are random (written under --tmp, nothing
is downloaded); the tokenizer is tinylab's (its ids are a subset of the 151936-entry vocabulary, so the embedding
and output layer cost what they cost in the real model).

- qlora: `train_sft` with method qlora in a fresh process (`train_bench.run_config`): tokens/s is the median
  over optimizer steps after the first `--warmup`; peak_mem_gib is the CUDA context (measured before any
  allocation) plus torch's peak reserved memory, what `nvidia-smi` shows for the process; estimate_gib is
  `train.memory.estimate` for the same shape, batch, length, LoRA rank and gradient checkpointing (it adds one
  GiB of context and 10% fragmentation). error_pct = (estimate - peak) / peak.
- merge: SLERP of the 4B-shaped base with an expert (base + noise), the two-teacher recipe's `t` gradient,
  `branchmerge merge --device cuda` and `--device cpu`, each a fresh process, input files read once first.
- vllm: the merged checkpoint served by `teachers.engines.serve_checkpoint(engine="vllm")` (the managed process
  every command uses), asked `--requests` chat completions of `--max-tokens` tokens through the teachers
  client; random weights rarely stop early, so each request decodes about max-tokens tokens. The built-in
  server's figure on the same path is in "builtin_serving" for the smoke shape only (it decodes on the CPU).
Without CUDA, the GPU parts say "skipped: no CUDA"; no figure is ever filled in that was not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
GiB = 1024**3
SLERP_T = [0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1]  # the two-teacher recipe's layer gradient
SMOKE = dict(
    hidden=64, layers=2, intermediate=128, heads=2, kv_heads=1, head_dim=32
)  # vocab: the tokenizer's
SKIP = "skipped: no CUDA"


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    from train_bench import cpu_name

    return f"cpu: {cpu_name()} ({os.cpu_count()} cores, torch {torch.__version__})"


def base_model(root: Path, smoke: bool) -> Path:
    if not smoke:
        from train_bench import model_dir

        return model_dir("qwen3-4b", root, None)
    from _checkpoints import qwen3_config, write_checkpoint

    from branchmerge.tinylab.tokenizer import build_tokenizer, save_tokenizer

    tok = build_tokenizer()
    config = qwen3_config({**SMOKE, "vocab": len(tok)})
    config.eos_token_id, config.pad_token_id = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    out = write_checkpoint(root / "smoke-base", config)
    save_tokenizer(tok, out)
    return out


def memory_estimate(base: Path, method: str, batch_size: int, seq_len: int, lora_r: int) -> float:
    from branchmerge.train.memory import estimate, shape_from_config

    shape = shape_from_config(json.loads((base / "config.json").read_text()))
    kind: Any = method
    e = estimate(shape, kind, batch_size=batch_size, seq_len=seq_len, checkpointing=True, lora_r=lora_r)
    return e.total / GiB


def train_check(base: Path, root: Path, method: str, args: argparse.Namespace) -> dict[str, Any]:
    """`method` (qlora; lora in the CPU smoke run, to check this path) timed and its memory against the model."""
    estimate = memory_estimate(base, method, args.batch_size, args.seq_len, 16)
    out: dict[str, Any] = {
        "config": f"{method} r=16, batch {args.batch_size} x {args.seq_len} tokens, gradient checkpointing, "
        + ("bf16" if method == "qlora" else "fp32"),
        "estimate_gib": round(estimate, 2),
    }
    if method == "qlora" and not torch.cuda.is_available():
        return {**out, "status": SKIP, "tokens_per_s": SKIP, "peak_mem_gib": SKIP}
    from train_bench import run_config, synthetic_examples

    examples = root / "examples.jsonl"
    rows = synthetic_examples(base, args.batch_size * (args.steps + 1), args.seq_len, 0.9)
    examples.write_text("".join(e.model_dump_json() + "\n" for e in rows))
    settings = dict(
        method=method,
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.seq_len,
        learning_rate=1e-4,
        gradient_checkpointing=True,
        report_to="none",
    )
    bench_args = argparse.Namespace(warmup=args.warmup, threads=None)
    r = run_config(method, settings, base, examples, root, bench_args)
    if r.get("status") != "ok":
        return {**out, "status": r.get("status", "failed")}
    speed = {"status": "ok", "tokens_per_s": round(r["tokens_per_s"], 1), "timed_steps": r["timed_steps"]}
    if not torch.cuda.is_available():
        return {**out, **speed, "peak_mem_gib": SKIP, "peak_rss_mb": round(r["peak_rss_mb"])}
    peak = r["context_gib"] + r["gpu_reserved_mb"] / 1024
    return {
        **out,
        **speed,
        "peak_mem_gib": round(peak, 2),
        "peak_allocated_gib": round(r["gpu_peak_mb"] / 1024, 2),
        "context_gib": round(r["context_gib"], 2),
        "error_pct": round(100 * (estimate - peak) / peak, 1),
    }


def merge(base: Path, root: Path) -> dict[str, Any]:
    from _checkpoints import checkpoint_bytes, write_checkpoint
    from _run import timed, warm_cache
    from transformers import AutoConfig

    from branchmerge.tinylab.tokenizer import build_tokenizer, save_tokenizer

    expert = write_checkpoint(root / "expert", AutoConfig.from_pretrained(base), seed=1, max_shard_size="2GB")
    save_tokenizer(build_tokenizer(), expert)
    config = root / "slerp.yaml"
    config.write_text(
        json.dumps(
            {
                "merge_method": "slerp",
                "base_model": str(base),
                "models": [{"model": str(base)}, {"model": str(expert)}],
                "parameters": {"t": [{"filter": "embed_tokens", "value": 1}, {"value": SLERP_T}]},
                "dtype": "bfloat16",
            }
        )
    )
    warm_cache([base, expert])
    out: dict[str, Any] = {
        "method": "slerp, 9-point t gradient",
        "mb_per_model": round(checkpoint_bytes(base) / 1e6, 1),
    }
    for device in ("cuda", "cpu"):
        if device == "cuda" and not torch.cuda.is_available():
            out["cuda"] = SKIP
            continue
        target = root / f"merged-{device}"
        cmd = [sys.executable, "-m", "branchmerge", "merge", str(config), str(target), "--device", device]
        wall, rss = timed(cmd, root / f"merge-{device}.log")
        out[device] = {"wall_s": round(wall, 2), "peak_rss_mb": round(rss)}
    if isinstance(out["cuda"], dict):
        out["cpu_over_cuda"] = round(out["cpu"]["wall_s"] / out["cuda"]["wall_s"], 2)
    merged = root / ("merged-cuda" if torch.cuda.is_available() else "merged-cpu")
    shutil.rmtree(expert)  # disk: a 4B-shaped checkpoint is 8 GB
    if merged.name != "merged-cpu":
        shutil.rmtree(root / "merged-cpu")
    return {**out, "merged": merged}


def serving(model: Path, engine: str, args: argparse.Namespace) -> dict[str, Any]:
    """Requests/s of `engine` serving `model`, through the managed server and the teachers client."""
    from branchmerge.records import Problem
    from branchmerge.teachers.client import generate_traces
    from branchmerge.teachers.config import TeacherConfig
    from branchmerge.teachers.engines import VllmOptions, serve_checkpoint

    problems = [
        Problem(
            id=f"q{i}",
            domain="bench",
            question=f"Add {i} and {2 * i + 7}, step by step.",
            reference=str(3 * i + 7),
            grader={"type": "exact"},
        )
        for i in range(args.requests)
    ]
    vllm = None
    if engine == "vllm":
        command = (args.vllm_python, "-m", "vllm.entrypoints.openai.api_server")
        extra = ("--max-model-len", "2048", "--gpu-memory-utilization", "0.85", "--dtype", "bfloat16")
        vllm = VllmOptions(
            command=command, args=extra, log_path=Path(args.tmp) / "vllm.log", ready_timeout_s=600
        )
    t0 = time.perf_counter()
    with serve_checkpoint(model, engine=engine, model_name="merged", vllm=vllm) as url:
        ready_s = time.perf_counter() - t0
        cfg = TeacherConfig(
            name="merged", base_url=url, model="merged", max_concurrency=args.concurrency, max_retries=0
        )
        out = Path(args.tmp) / f"traces-{engine}.jsonl"
        s = generate_traces(problems, cfg, out, max_tokens=args.max_tokens, seed=0, show_progress=False)
    t = s.teachers["merged"]
    return {
        "requests": t.requests,
        "errors": t.errors,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "ready_s": round(ready_s, 1),
        "wall_s": round(s.wall_s, 2),
        "requests_per_s": round(t.requests / s.wall_s, 2),
        "completion_tokens_per_s": round(t.completion_tokens / s.wall_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results-gpu.json")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes: check the script's logic on a CPU")
    ap.add_argument("--tmp", default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument(
        "--keep", action="store_true", help="keep the scratch folder (checkpoints, logs) afterwards"
    )
    ap.add_argument("--vllm-python", default=sys.executable, help="the Python that has vLLM installed")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args(argv)
    # A time limit's SIGTERM unwinds like an exception: the sections done are saved, a vLLM server is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.cpu_smoke:
        args.seq_len, args.batch_size, args.steps, args.requests, args.max_tokens = 64, 2, 3, 8, 8
    root = Path(args.tmp or tempfile.mkdtemp(prefix="gpu-check-"))
    args.tmp = str(root)
    root.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "device": device_name(),
        "mode": "cpu-smoke (tiny shapes)" if args.cpu_smoke else "qwen3-4b shape, random weights",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "host": platform.node(),
    }
    try:
        t0 = time.perf_counter()
        base = base_model(root, args.cpu_smoke)
        result["write_base_s"] = round(time.perf_counter() - t0, 1)
        result["qlora"] = train_check(base, root, "qlora", args)
        if args.cpu_smoke:
            result["lora_smoke"] = train_check(base, root, "lora", args)
        _save(args.out, result)
        m = merge(base, root)
        merged = m.pop("merged")
        result["merge"] = m
        _save(args.out, result)
        if torch.cuda.is_available():
            result["vllm"] = serving(merged, "vllm", args)
        else:
            result["vllm"] = {"status": SKIP, "requests_per_s": SKIP}
        if args.cpu_smoke:
            result["builtin_serving"] = serving(merged, "builtin", args)
    finally:
        _save(args.out, result)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


def _save(path: Path, result: dict[str, Any]) -> None:
    """Atomically: a run cut short keeps the sections it finished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
