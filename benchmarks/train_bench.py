"""SFT training throughput and peak memory of `train_sft`, per method, packing and Liger kernels.

    python benchmarks/train_bench.py --shape tiny --method full,lora,dora --threads 1   # CPU, 2.5 minutes
    python benchmarks/train_bench.py --shape qwen3-4b --method lora,qlora --seq-len 4096 --packing --liger

Shapes: `tiny` is the shipped tinylab student (0.8M parameters); `qwen3-4b` is Qwen3-4B's shape (hidden 2560,
36 layers, 32 query / 8 KV heads of 128, MLP 9728, vocab 151936, tied embeddings; 4.0B parameters) with random
bf16 weights written under --tmp, and the tinylab tokenizer (its ids are a subset of the model's vocabulary, so
the embedding and the 151936-way output layer cost what they cost in the real model). Nothing is downloaded.

Data: synthetic chat examples cut from tinylab reasoning text, each between --min-fill x --seq-len and --seq-len
tokens (uniformly), so rows are long and unequal as traces are. Every configuration trains on the same examples.

Each configuration runs `train_sft` (the real path: TRL SFTTrainer, PEFT, packing, saving merged weights) in a
fresh subprocess, whose peak RSS a small launcher reports (`_run.timed`), and measures:
  - tokens/s: real tokens (padding excluded: TRL's own `num_tokens` count, read at every logged step) per
    second of each optimizer step after the first --warmup ones, the median over those steps (over logging
    intervals beyond 39 steps); model loading, dataset tokenization/packing, the first (allocating) steps and
    saving are all excluded. The median, because on a shared machine a neighbour can stall torch's threads for
    whole steps; "window" is the plain total (all timed tokens over all timed time), stalls included;
  - peak memory: the child's peak RSS (everything, load and save included); on CUDA also
    torch.cuda.max_memory_allocated over the run.
Ratios are against the baseline, `lora` without packing or Liger, which every run measures. Without CUDA,
qlora and Liger rows are reported as skipped (they need a GPU plus bitsandbytes / liger-kernel).
Packing uses TRL's padding-free best-fit packing: batch_size rows of --seq-len laid end to end in one row. On
SDPA/eager attention (CPU) that row gets a block-diagonal mask quadratic in its length; flash-attention (--attn
flash_attention_2) runs it as variable-length sequences.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _run import timed
from transformers import TrainerCallback

HERE = Path(__file__).resolve()
BASELINE = ("lora", False, False)  # method, packing, liger
# Qwen/Qwen3-4B's config.json (tie_word_embeddings true, rope_theta 1e6, max_position_embeddings 40960).
QWEN3_4B = dict(hidden=2560, layers=36, intermediate=9728, heads=32, kv_heads=8, head_dim=128, vocab=151936)
DEFAULTS = {  # shape -> seq_len, batch_size, steps, gradient checkpointing
    "tiny": dict(seq_len=512, batch_size=8, steps=12, grad_ckpt=False),
    "qwen3-4b": dict(seq_len=4096, batch_size=2, steps=10, grad_ckpt=True),
}


class StepClock(TrainerCallback):
    """When each optimizer step ended, and the real tokens trained so far at each logged step."""

    def __init__(self) -> None:
        self.ends: dict[int, float] = {}
        self.tokens: dict[int, int] = {}

    def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the optimizer step is asynchronous
        self.ends[state.global_step] = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
        # TRL's running count: attention-mask ones, or the whole row in padding-free packing (which has no pads)
        if logs and "num_tokens" in logs:
            self.tokens[state.global_step] = int(logs["num_tokens"])

    def intervals(self, warmup: int) -> list[tuple[float, int]]:
        """(seconds, tokens) between consecutive logged steps from the end of step `warmup` on (train_sft logs
        every step up to 39 steps, every max_steps // 20 beyond)."""
        marks = [
            (self.ends[s], self.tokens[s]) for s in sorted(self.tokens) if s >= warmup and s in self.ends
        ]
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:], strict=False)]


def worker(spec_file: str) -> None:
    """One configuration in this (fresh) process; writes its measurements to spec["result"]."""
    from branchmerge.records import SFTExample
    from branchmerge.train.sft import SFTSettings, train_sft

    spec = json.loads(Path(spec_file).read_text())
    context_gib = None
    if (
        torch.cuda.is_available()
    ):  # what the GPU holds before any tensor: the CUDA context (and other processes)
        free, total = torch.cuda.mem_get_info()
        context_gib = (total - free) / 2**30
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    lines = Path(spec["examples"]).read_text().splitlines()
    examples = [SFTExample.model_validate_json(line) for line in lines]
    clock = StepClock()
    r = train_sft(
        examples,
        spec["base"],
        spec["out"],
        SFTSettings(**spec["settings"]),
        label=spec["name"],
        show_progress=False,
        callbacks=[clock],
    )
    steps = clock.intervals(spec["warmup"])
    seconds, tokens = sum(dt for dt, _ in steps), sum(n for _, n in steps)
    result = {
        "timed_steps": len(steps),
        "timed_tokens": tokens,
        "tokens_per_s": statistics.median(n / dt for dt, n in steps),
        "tokens_per_s_window": tokens / seconds,
        "step_s": [round(dt, 4) for dt, _ in steps],
        "step_tokens": [n for _, n in steps],
        "train_sft_s": r.seconds,  # load + dataset preparation + all steps + merge and save
        "first_loss": r.first_loss,
        "final_loss": r.final_loss,
    }
    if torch.cuda.is_available():
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
        result["context_gib"] = context_gib
    Path(spec["result"]).write_text(json.dumps(result))


def missing(method: str, liger: bool, attn: str | None) -> list[str]:
    """What this machine lacks for a configuration (empty: it can run)."""
    needs = []
    if (method == "qlora" or liger or (attn or "").startswith("flash")) and not torch.cuda.is_available():
        needs.append("CUDA")
    for wanted, module, package in [
        (method == "qlora", "bitsandbytes", "bitsandbytes"),
        (liger, "liger_kernel", "liger-kernel"),
        (attn == "flash_attention_2", "flash_attn", "flash-attn"),
    ]:
        if wanted and importlib.util.find_spec(module) is None:
            needs.append(package)
    return needs


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def model_dir(shape: str, root: Path, layers: int | None) -> Path:
    """The model folder to train from: the shipped student, or a Qwen3-4B-shaped checkpoint written under root."""
    from branchmerge.tinylab.weights import student_dir

    if shape == "tiny":
        return student_dir()
    from _checkpoints import write_checkpoint
    from transformers import Qwen3Config

    from branchmerge.tinylab.tokenizer import build_tokenizer, save_tokenizer

    tok = build_tokenizer()
    s = QWEN3_4B
    config = Qwen3Config(
        vocab_size=s["vocab"],
        hidden_size=s["hidden"],
        intermediate_size=s["intermediate"],
        num_hidden_layers=layers or s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        head_dim=s["head_dim"],
        max_position_embeddings=40960,
        rope_parameters={"rope_theta": 1_000_000.0, "rope_type": "default"},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
        dtype="bfloat16",
        architectures=["Qwen3ForCausalLM"],
    )
    out = write_checkpoint(root / "qwen3-4b", config, max_shard_size="2GB")
    save_tokenizer(tok, out)
    return out


def synthetic_examples(base: Path, n: int, seq_len: int, min_fill: float, seed: int = 0) -> list[Any]:
    """n chat examples of min_fill*seq_len..seq_len tokens (by the model's own chat template), tinylab text."""
    from transformers import AutoTokenizer

    from branchmerge.records import SFTExample
    from branchmerge.tinylab.domains import DOMAINS, generate_problems
    from branchmerge.train.sft_data import assistant_content

    tok = AutoTokenizer.from_pretrained(base)
    problems = [p for d in DOMAINS for p in generate_problems(d, 300, seed=seed)]
    pool: list[int] = []  # reasoning tokens to cut examples from
    while len(pool) < 2 * seq_len:
        for p in problems:
            pool += tok(p.meta["solution"] + "\n", add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)

    def count(messages: list[dict[str, str]]) -> int:
        return len(
            tok(str(tok.apply_chat_template(messages, tokenize=False)), add_special_tokens=False)["input_ids"]
        )

    out = []
    for i in range(n):
        p = problems[i % len(problems)]
        target = rng.randint(int(min_fill * seq_len), seq_len)
        k, start = target, rng.randrange(len(pool) - seq_len)
        while True:
            content = assistant_content(tok.decode(pool[start : start + k]), p.reference)
            messages = [{"role": "user", "content": p.question}, {"role": "assistant", "content": content}]
            tokens = count(messages)
            if tokens <= target:
                break
            k -= tokens - target
        out.append(
            SFTExample(
                messages=messages,
                domain=p.domain,
                num_tokens=tokens,
                problem_id=f"{p.id}-{i}",
                teacher="bench",
            )
        )
    return out


def run_config(
    name: str, settings: dict[str, Any], base: Path, examples: Path, root: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Train one configuration in a fresh process: its measurements plus the process's peak RSS and wall time."""
    spec = {
        "name": name,
        "settings": settings,
        "base": str(base),
        "examples": str(examples),
        "out": str(root / f"out-{name}"),
        "result": str(root / f"{name}.json"),
        "warmup": args.warmup,
        "threads": args.threads,
    }
    spec_file = root / f"{name}.spec.json"
    spec_file.write_text(json.dumps(spec))
    try:
        wall, rss = timed([sys.executable, str(HERE), "--worker", str(spec_file)], root / f"{name}.log")
    except RuntimeError as e:
        return {"status": "failed: " + str(e).strip().splitlines()[-1][:200]}
    finally:
        shutil.rmtree(root / f"out-{name}", ignore_errors=True)
    return {
        "status": "ok",
        "process_wall_s": wall,
        "peak_rss_mb": rss,
        **json.loads(Path(spec["result"]).read_text()),
    }


def configs(args: argparse.Namespace) -> list[tuple[str, bool, bool]]:
    """(method, packing, liger) in the order measured, the baseline first."""
    packings = [False, True] if args.packing is None else [args.packing]
    ligers = [args.liger or False]
    wanted = [(m, p, g) for m in args.method for p in packings for g in ligers]
    return [BASELINE, *(c for c in wanted if c != BASELINE)]


def _f(x: float | None, spec: str, width: int, unit: str = "") -> str:
    return ("-" if x is None else format(x, spec) + unit).rjust(width)


def print_table(rows: list[dict[str, Any]]) -> None:
    base = rows[0]
    mem = "gpu_peak_mb" if "gpu_peak_mb" in base else "peak_rss_mb"
    head = (
        f"{'method':6} {'packing':7} {'liger':5} {'tokens/s':>9} {'vs base':>7} {'window':>9} {'ms/step':>8} "
        f"{mem.replace('_', ' '):>12} {'vs base':>7} {'tokens':>8} {'wall s':>7}  status"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        ok = r["status"] == "ok" and base["status"] == "ok"
        steps = r.get("step_s")
        print(
            f"{r['method']:6} {str(r['packing']):7} {str(r['liger']):5} "
            f"{_f(r.get('tokens_per_s'), '.0f', 9)} "
            f"{_f(r['tokens_per_s'] / base['tokens_per_s'] if ok else None, '.2f', 7, 'x')} "
            f"{_f(r.get('tokens_per_s_window'), '.0f', 9)} "
            f"{_f(1000 * statistics.median(steps) if steps else None, '.0f', 8)} {_f(r.get(mem), '.0f', 12)} "
            f"{_f(r[mem] / base[mem] if ok else None, '.2f', 7, 'x')} {_f(r.get('timed_tokens'), 'd', 8)} "
            f"{_f(r.get('process_wall_s'), '.1f', 7)}  {r['status']}"
        )
    print(
        f"baseline: {BASELINE[0]} without packing or Liger. tokens/s: median over the timed steps of real "
        "(non-padding) tokens / step time; window: all timed tokens / all timed time (neighbours' stalls "
        "included); vs base = this / baseline; wall s: the whole process (imports, load, data, training, save)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=list(DEFAULTS), default="tiny")
    p.add_argument("--method", default="full,lora,dora", help="comma-separated: full, lora, qlora, dora")
    p.add_argument("--seq-len", type=int, help="max_length (default: 512 tiny, 4096 qwen3-4b)")
    p.add_argument(
        "--packing", action=argparse.BooleanOptionalAction, help="only packed / unpacked rows (default: both)"
    )
    p.add_argument("--liger", action=argparse.BooleanOptionalAction, help="Liger kernels (default: off)")
    p.add_argument("--steps", type=int, help="optimizer steps per configuration (default: 12 tiny, 10 4b)")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of tokens/s")
    p.add_argument("--batch-size", type=int, help="rows per step (default: 8 tiny, 2 qwen3-4b)")
    p.add_argument(
        "--grad-ckpt", action=argparse.BooleanOptionalAction, help="gradient checkpointing (default: 4b on)"
    )
    p.add_argument("--attn", help="attn_implementation, e.g. flash_attention_2 (default: transformers' SDPA)")
    p.add_argument(
        "--min-fill", type=float, default=0.25, help="shortest example, as a fraction of --seq-len"
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads in each run (default: torch's). On a small shared VM 1 is steadier: threads that "
        "wait on each other stall whole steps whenever the host takes a core away",
    )
    p.add_argument("--layers", type=int, help="override the qwen3-4b layer count (quick checks)")
    p.add_argument("--tmp", default="/tmp", help="where checkpoints and outputs go (deleted afterwards)")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for key, value in DEFAULTS[args.shape].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.method = args.method.split(",")
    unknown = [m for m in args.method if m not in ("full", "lora", "qlora", "dora")]
    if unknown:
        p.error(f"--method: {', '.join(unknown)} not a method (known: full, lora, qlora, dora)")
    if args.warmup >= args.steps:
        p.error(f"--warmup {args.warmup} leaves no timed step of --steps {args.steps}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    os.environ["HF_HUB_OFFLINE"] = "1"  # everything is local; the training children inherit this
    cuda = torch.cuda.is_available()
    root = Path(tempfile.mkdtemp(prefix="train-bench-", dir=args.tmp))
    rows: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        base = model_dir(args.shape, root, args.layers)
        n = args.steps * args.batch_size * 3  # packed rows hold ~1.6 examples; the rest is slack
        examples = synthetic_examples(base, n, args.seq_len, args.min_fill)
        data = root / "examples.jsonl"
        data.write_text("".join(e.model_dump_json() + "\n" for e in examples))
        lengths = sorted(e.num_tokens for e in examples)
        print(
            f"{args.shape}: model {base} ({time.perf_counter() - t0:.1f} s to prepare); {n} examples of "
            f"{lengths[0]}-{lengths[-1]} tokens (median {lengths[n // 2]}); seq_len {args.seq_len}, batch "
            f"{args.batch_size}, {args.steps} steps ({args.warmup} untimed); "
            f"{'CUDA ' + torch.cuda.get_device_name() if cuda else 'CPU, ' + str(os.cpu_count()) + ' cores'}, "
            f"load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        for method, packing, liger in configs(args):
            row: dict[str, Any] = {"method": method, "packing": packing, "liger": liger}
            needs = missing(method, liger, args.attn)
            if needs:
                rows.append({**row, "status": "skipped: needs " + " + ".join(needs)})
                print(f"   {method} packing={packing} liger={liger}: {rows[-1]['status']}", flush=True)
                continue
            settings = {
                "method": method,
                "packing": packing,
                "use_liger_kernel": liger,
                "max_length": args.seq_len,
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "bf16": cuda,
                "gradient_checkpointing": args.grad_ckpt,
                "attn_implementation": args.attn,
                "report_to": "none",
            }
            name = f"{method}-{'pack' if packing else 'nopack'}{'-liger' if liger else ''}"
            rows.append({**row, **run_config(name, settings, base, data, root, args)})
            r = rows[-1]
            print(
                f"   {name:20} {_f(r.get('tokens_per_s'), '.0f', 9)} tokens/s  "
                f"{_f(r.get('peak_rss_mb'), '.0f', 6)} MB RSS  {r['status']}",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(rows)
    if args.out:
        meta = {
            "command": "python benchmarks/train_bench.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "shape": args.shape,
            "seq_len": args.seq_len,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "examples": {
                "n": n,
                "min_tokens": lengths[0],
                "median_tokens": lengths[n // 2],
                "max_tokens": lengths[-1],
            },
            "gradient_checkpointing": args.grad_ckpt,
            "threads": args.threads or torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if cuda else f"CPU ({cpu_name()}, {os.cpu_count()} cores)",
            "torch": torch.__version__,
            "load_1m": os.getloadavg()[0],
            "baseline": "lora, no packing, no liger",
        }
        args.out.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
        print(f"\nrows written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
