"""One small-model workload, timed, in its own process: run by busy_bench.py, which sets its environment.

    python benchmarks/_busy_workloads.py train|generate POLICY

POLICY: `policy` applies branchmerge's thread policy (`branchmerge.runtime.apply`) after the environment that
busy_bench chose; `torch` leaves torch's defaults (one intra-op thread per core). Prints the seconds of each
timed unit (a training step, a batch of generations) after warm-up as it ends, one per line, so a run stopped at
busy_bench's timeout still reports the units it finished.

- train: the shipped tiny student (tinylab, 0.8M parameters), AdamW, batch 16 x 180 tokens, 1 warm-up + 5
  timed steps (what the demo's expert training does, step by step);
- generate: the same model, 8 prompts of 32 tokens, 48 new tokens greedy, 1 warm-up + 3 timed batches.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from transformers import Qwen3ForCausalLM

STUDENT = Path(__file__).resolve().parents[1] / "src/branchmerge/tinylab/weights/student"


def _train(model: Qwen3ForCausalLM) -> None:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(model.config.vocab_size, (16, 180), generator=g)
    for step in range(6):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step >= 1:
            print(f"{time.perf_counter() - start:.4f}", flush=True)


def _generate(model: Qwen3ForCausalLM) -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(model.config.vocab_size, (8, 32), generator=g)
    with torch.no_grad():
        for i in range(4):
            start = time.perf_counter()
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=48,
                min_new_tokens=48,
                do_sample=False,
            )
            if i >= 1:
                print(f"{time.perf_counter() - start:.4f}", flush=True)


def main(workload: str, policy: str) -> None:
    model = Qwen3ForCausalLM.from_pretrained(STUDENT, dtype=torch.float32)
    if policy == "policy":
        from branchmerge import runtime

        runtime.apply("train" if workload == "train" else "serve", params=model.num_parameters())
    _train(model) if workload == "train" else _generate(model)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
