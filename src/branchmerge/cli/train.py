"""`branchmerge train`: SFT of a student on SFT examples (and, later, the other training methods)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from branchmerge.cli.main import command, console
from branchmerge.errors import BranchmergeError
from branchmerge.records import SFTExample, read_jsonl


@command("train")
def train(
    sft: Annotated[Path, typer.Argument(help="SFT examples JSONL.")],
    base: Annotated[Path, typer.Option("--base", help="Base checkpoint to fine-tune.")],
    out: Annotated[Path, typer.Option("--out", help="Output checkpoint folder.")],
    method: Annotated[str, typer.Option("--method", help="full or lora.")] = "full",
    max_steps: Annotated[int, typer.Option("--max-steps")] = 100,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    lr: Annotated[float, typer.Option("--lr")] = 5e-4,
    max_length: Annotated[int, typer.Option("--max-length")] = 4096,
    domain: Annotated[list[str] | None, typer.Option("--domain", help="Train only on these domains.")] = None,
) -> None:
    """Supervised fine-tuning (TRL SFTTrainer), loss on assistant tokens only; saves full weights.

    Example: branchmerge train sft.jsonl --base ./student --out ./expert-add --domain add --max-steps 100
    """
    from pydantic import ValidationError

    from branchmerge.train import SFTSettings, train_sft

    try:
        settings = SFTSettings(
            method=method,
            max_steps=max_steps,
            batch_size=batch_size,
            learning_rate=lr,
            max_length=max_length,  # type: ignore[arg-type]
        )
    except ValidationError as e:
        raise BranchmergeError(f"train: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}") from None
    examples = [e for e in read_jsonl(sft, SFTExample) if not domain or e.domain in domain]
    r = train_sft(examples, base, out, settings, label=out.name)
    console.print(
        f"{r.steps} steps on {r.examples} examples, loss {r.first_loss:.3f} → {r.final_loss:.3f} → {out}"
    )
